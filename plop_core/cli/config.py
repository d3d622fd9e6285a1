"""`plop config`: the configuration reference, generated from the one pydantic schema (plop_core/config.py).

Usage:
    plop config docs > docs/config.md         # or: plop config docs --out docs/config.md
    python -m plop_core.cli config docs

Why generated: error messages point at docs/config.md, so it must list exactly the fields the schema
accepts. Every section and field is listed with its type, default, constraints and description;
tests/test_config_docs.py fails when the committed file is out of date (regenerate with the line above).
"""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADER = """# Configuration reference

Generated from the pydantic schema in `plop_core/config.py` by `plop config docs > docs/config.md`;
do not edit by hand (`tests/test_config_docs.py` fails when this file is out of date).

One schema serves sweep YAML files (`plop sweep FILE`, `deploy/sweeps/`), `--set key.sub=value`
overrides, `prefect deployment run ... --param config='{...}'` and the flows. Unknown keys are errors,
so a typo never falls back to a default silently. Paths below are YAML keys (`finetune.lora.r`);
`models[]` is a list of entries (a bare string is read as `{id: ...}`).
"""

_CONSTRAINTS = (("ge", ">= {}"), ("gt", "> {}"), ("le", "<= {}"), ("lt", "< {}"), ("min_length", "min length {}"),
                ("max_length", "max length {}"))


def _type_text(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join("null" if a is type(None) else _type_text(a) for a in args)
    if origin in (list, tuple, set):
        return f"list[{', '.join(_type_text(a) for a in args)}]"
    if origin is dict:
        return f"dict[{', '.join(_type_text(a) for a in args)}]"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp.__name__
    if tp is typing.Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _default_text(field) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):  # a section: say where its default differs from the section's own
        own = type(value)().model_dump(mode="json") if not any(
            f.is_required() for f in type(value).model_fields.values()) else {}
        diff = {k: v for k, v in value.model_dump(mode="json").items() if own.get(k) != v}
        return "(section defaults)" if not diff else \
            "section defaults, except " + ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in diff.items())
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    return "`" + json.dumps(value, default=str).replace("|", "\\|") + "`"


def _constraints(field) -> str:
    out = []
    for meta in field.metadata:
        for attr, fmt in _CONSTRAINTS:
            v = getattr(meta, attr, None)
            if v is not None:
                out.append(fmt.format(v))
    return ", ".join(out)


def _section_model(tp) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if typing.get_origin(tp) in (list, tuple):
        inner = typing.get_args(tp)
        if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
            return inner[0]
    return None


def _sections(model: type[BaseModel], path: str, field=None) -> list[tuple[str, type[BaseModel], object]]:
    """(path, section model, the field holding it) for `model` and every section under it, depth first."""
    out = [(path, model, field)]
    for name, sub_field in model.model_fields.items():
        sub = _section_model(sub_field.annotation)
        if sub is not None:
            list_like = typing.get_origin(sub_field.annotation) in (list, tuple)
            out += _sections(sub, f"{path}.{name}{'[]' if list_like else ''}".lstrip("."), sub_field)
    return out


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def config_reference() -> str:
    """The markdown reference of `SweepConfig` and every section under it (docs/config.md)."""
    from plop_core.config import SweepConfig

    lines = [HEADER]
    for path, model, holder in _sections(SweepConfig, ""):
        title = f"`{path}`: {model.__name__}" if path else f"Top level: {model.__name__}"
        lines += [f"## {title}", ""]
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(("!!!", "Usage docs")):
            lines += [" ".join(doc.split()), ""]
        if holder is not None and _default_text(holder).startswith("section defaults, except"):
            lines += [f"Defaults below are the section's own; when `{path}` is left out its "
                      + _default_text(holder).removeprefix("section ") + ".", ""]
        lines += ["| field | type | default | constraints | description |", "|---|---|---|---|---|"]
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            sub = _section_model(field.annotation)
            desc = field.description or ""
            if sub is not None:
                anchor = f"{key}{'[]' if typing.get_origin(field.annotation) in (list, tuple) else ''}"
                desc = (desc + f" (section `{anchor}` below)").strip()
            lines.append(f"| `{key}` | {_type_text(field.annotation)} | {_default_text(field)} | "
                         f"{_constraints(field)} | {_cell(desc)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="the configuration reference (docs/config.md), from the schema",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = p.add_subparsers(dest="config_command", metavar="{docs}")
    d = csub.add_parser("docs", help="print the configuration reference as markdown")
    d.add_argument("--out", default=None, help="write it to this file instead of stdout (e.g. docs/config.md)")
    d.set_defaults(func=run_docs)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def run_docs(args: argparse.Namespace) -> int:
    text = config_reference()
    if args.out:
        from plop_core.atomic import atomic_write_text

        atomic_write_text(Path(args.out), text)
        print(json.dumps({"out": str(Path(args.out).resolve())}))
    else:
        print(text, end="")
    return 0
