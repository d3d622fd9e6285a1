"""Tiny fixed-seed models and a tokenizer built offline, for tests (no hub).

`tiny_tokenizer()` trains a byte-level BPE in-process (covers every string, no <unk>), with pad/eos
and a chat template. `tiny_model(arch)` builds a 2-layer model of a named architecture from its config
with a fixed seed; `save_tiny(arch, path)` writes it with save_pretrained so loading code is exercised
by path exactly as for a real model.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? The answer is 72.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "def add(a, b):\n    return a + b\n",
    "The premise entails the hypothesis. The hypothesis contradicts the premise.",
    "Question: What is 2 + 2? Answer: 4. Question: What is 10 - 3? Answer: 7.",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total?",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


VOCAB = 512


def _common(tok):
    return dict(vocab_size=VOCAB, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)


def tiny_config(arch: str):
    """A 2-layer config of `arch` (llama, qwen2, ...). Extended by the architecture test matrix."""
    import transformers as T

    tok = tiny_tokenizer()
    c = _common(tok)
    if arch == "llama":
        return T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256, **c)
    if arch == "qwen2":
        return T.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256, **c)
    # architecture matrix of module discovery / placement (tests/test_modules.py, tests/test_placement.py)
    attn = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
    if arch == "mistral":
        return T.MistralConfig(intermediate_size=128, num_key_value_heads=2, **attn, **c)
    if arch == "qwen3":
        return T.Qwen3Config(intermediate_size=128, num_key_value_heads=2, head_dim=16, **attn, **c)
    if arch == "gemma3":  # Gemma3ForCausalLM; head_dim*heads (96) != hidden (64) on purpose
        return T.Gemma3TextConfig(intermediate_size=128, num_key_value_heads=2, head_dim=24, sliding_window=64,
                                  **attn, **c)
    if arch == "phi3":  # fused qkv_proj and gate_up_proj
        return T.Phi3Config(intermediate_size=128, num_key_value_heads=2, **attn, **c)
    if arch == "gpt2":  # Conv1D c_attn (fused q|k|v), c_proj, c_fc
        return T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **c)
    if arch == "gpt_neox":  # query_key_value interleaved per head
        return T.GPTNeoXConfig(intermediate_size=128, **attn, **c)
    if arch == "bert":  # encoder; build with AutoModelForSequenceClassification / AutoModel
        return T.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=256, vocab_size=VOCAB, pad_token_id=tok.pad_token_id)
    if arch == "mixtral":  # experts packed as 3-D parameters (E, 2I, H) and (E, H, I)
        return T.MixtralConfig(intermediate_size=96, num_key_value_heads=2, num_local_experts=4,
                               num_experts_per_tok=2, **attn, **c)
    if arch == "qwen2_moe":  # packed routed experts + a dense shared expert (Linear gate/up/down)
        return T.Qwen2MoeConfig(intermediate_size=128, moe_intermediate_size=32, shared_expert_intermediate_size=96,
                                num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, **attn, **c)
    if arch == "qwen3_moe":
        return T.Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32, num_key_value_heads=2, head_dim=16,
                                num_experts=4, num_experts_per_tok=2, **attn, **c)
    raise KeyError(f"no tiny config for {arch!r}")


def tiny_model(arch: str = "llama", seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch))
    model.eval()
    return model


def save_tiny(arch: str, path: Path, seed: int = 0) -> Path:
    path = Path(path)
    tiny_model(arch, seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
