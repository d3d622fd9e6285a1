"""What PEFT needs to know about a base model besides the modules: its task type, name and revision.

Why: a `LoraConfig` with `task_type=None` makes `get_peft_model` return a bare `PeftModel` (no
`generate`, no task-specific forward) and an empty `base_model_name_or_path` leaves
`AutoPeftModel*.from_pretrained` nothing to load. Both follow from the model object, so they are read
from it once (by `discover_candidates`, stored on the `Discovery` and the `Placement`) instead of being
typed by hand.

`peft_task_type(model)` maps the model class to PEFT's `TaskType` names through transformers' own auto
mappings (the same tables `AutoModelFor*` use), in this order: seq2seq LM, causal LM (incl. image-text-
to-text decoders such as Gemma3ForConditionalGeneration), sequence classification, token
classification, question answering, bare backbone (FEATURE_EXTRACTION); classes outside the mappings
(custom code) are matched by their name's suffix. A model with no PEFT task (e.g. a masked-LM head)
gives None.
"""

from __future__ import annotations

TASK_TYPES = ("CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")

# (PEFT task type, transformers auto-mapping names), first hit wins
_MAPPINGS = (
    ("SEQ_2_SEQ_LM", ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES")),
    ("CAUSAL_LM", ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES")),
    ("SEQ_CLS", ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",)),
    ("TOKEN_CLS", ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",)),
    ("QUESTION_ANS", ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",)),
    ("FEATURE_EXTRACTION", ("MODEL_MAPPING_NAMES",)),
)
_SUFFIXES = (("ForCausalLM", "CAUSAL_LM"), ("LMHeadModel", "CAUSAL_LM"), ("ForSequenceClassification", "SEQ_CLS"),
             ("ForTokenClassification", "TOKEN_CLS"), ("ForQuestionAnswering", "QUESTION_ANS"))


def _class_names(mapping_name: str) -> set[str]:
    from transformers.models.auto import modeling_auto

    out: set[str] = set()
    for v in getattr(modeling_auto, mapping_name, {}).values():
        out.update([v] if isinstance(v, str) else v)
    return out


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def peft_task_type(model) -> str | None:
    """PEFT's task type for `model` (see the module docstring); None when PEFT has none for it."""
    model = _unwrap(model)
    cls = type(model).__name__
    config = getattr(model, "config", None)
    for task, mappings in _MAPPINGS:
        if any(cls in _class_names(m) for m in mappings):
            return task
    if cls.endswith("ForConditionalGeneration"):
        return "SEQ_2_SEQ_LM" if getattr(config, "is_encoder_decoder", False) else "CAUSAL_LM"
    for suffix, task in _SUFFIXES:
        if cls.endswith(suffix):
            return task
    if cls.endswith("Model") and not any(h in cls for h in ("For", "Head")):
        return "FEATURE_EXTRACTION"
    return None


def base_model_facts(model) -> dict:
    """JSON-able facts PEFT stores with an adapter: task_type, base_model_name_or_path, revision, plus the
    class and model_type (for humans). Name and revision are None for a model built from a config."""
    model = _unwrap(model)
    config = getattr(model, "config", None)
    name = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None) or None
    return {"task_type": peft_task_type(model), "base_model_name_or_path": str(name) if name else None,
            "revision": getattr(config, "_commit_hash", None) or None, "architecture": type(model).__name__,
            "model_type": getattr(config, "model_type", None)}
