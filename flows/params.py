"""What the sweep flow's parameters mean: a whole `SweepConfig`, or a committed sweep YAML by name, plus
`--set`-style overrides. The flow's signature (flows/sweep.py) uses these types, so the parameter schema
the Prefect server stores for a deployment is typed: the server checks `--param/--params` against it
when a flow run is created (nothing starts on a bad one) and the UI renders it as a form.

    prefect deployment run 'plop-sweep/score' --param sweep=score-smollm2 \\
        --param overrides='["sampling.n_samples=64", "tasks=[gsm8k]"]'
    prefect deployment run 'plop-sweep/score' \\
        --param config='{"models": ["smollm2-135m-instruct"], "tasks": ["arithmetic"]}'   # the rest: defaults

- `config`: a SweepConfig; sections left out take their defaults. When given, it is the sweep
  (a deployment's default `sweep` is then not used; the flow logs which source it ran).
- `sweep`: the name of a YAML under deploy/sweeps/ (an enum in the schema: the UI offers the committed
  ones); read on the worker from its checkout, never from a path the caller chooses.
- `overrides`: `key.sub=value` strings, exactly `plop sweep CONFIG --set key.sub=value`
  (`plop_core.config.apply_overrides`), applied to whichever of the two is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from plop_core.config import ConfigError, SweepConfig, load_named_sweep, load_sweep_config, sweep_names

SWEEPS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "sweeps"

_NAMES = tuple(sweep_names(SWEEPS_DIR))
SweepName = Literal[_NAMES] if _NAMES else str  # an enum in the parameter schema (dropdown; checked at creation)

# the shape of `plop sweep --set KEY=VALUE`, checked by the server at creation; the key itself is checked when
# the override is applied to the config (unknown fields are named then, before anything starts)
Override = Annotated[str, Field(pattern=r"^\s*[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*\s*=",
                                description="KEY.SUB=VALUE, the value in YAML (e.g. sampling.n_samples=64)")]


def sweep_config(config: SweepConfig | dict | None, sweep: str | None,
                 overrides: list[str] | None = None) -> SweepConfig:
    """The one SweepConfig the flow runs: `config`, else the committed sweep `sweep`, then `overrides`.
    Raises ConfigError naming the field (or the file and the known names) and the fix."""
    if config is not None:
        data = config.model_dump(mode="json") if isinstance(config, SweepConfig) else config
        return load_sweep_config(data, overrides)
    if sweep is not None:
        return load_named_sweep(sweep, SWEEPS_DIR, overrides)
    raise ConfigError("give the parameter `sweep` (a config in deploy/sweeps/: "
                      f"{', '.join(sweep_names(SWEEPS_DIR)) or 'none'}) or `config` (a SweepConfig)")


def source_of(config: Any, sweep: str | None) -> str:
    """Where the flow's config came from, in words (logged at the start of a run)."""
    if config is not None:
        return "the `config` parameter" + (f" (the `sweep` {sweep!r} is not used)" if sweep else "")
    return f"deploy/sweeps/{sweep}.yaml"


def run_name(parameters: dict) -> str:
    """`sweep-<name>` of the config the parameters resolve to; never raises (Prefect names the run before
    the flow body runs, and a bad config must fail there with its own message, not here)."""
    try:
        cfg = sweep_config(parameters.get("config"), parameters.get("sweep"), parameters.get("overrides"))
        return f"sweep-{cfg.name}"
    except Exception:  # noqa: BLE001 -- the flow body reports the error
        return f"sweep-{parameters.get('sweep') or 'config'}"
