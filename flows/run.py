"""Run a sweep from this process: Prefect API (embedded local server or $PREFECT_API_URL), Ray (local
or $RAY_ADDRESS), then the scoring or benchmark flow. Used by `plop sweep` and by the tests."""

from __future__ import annotations

from flows.runtime import prefect_api, ray_cluster
from plop_core.config import SweepConfig, load_sweep_config


def run_sweep(config: SweepConfig | dict | str, overrides: list[str] | None = None,
              num_cpus: int | None = None) -> dict:
    """Validate the config, then run the benchmark flow if it finetunes, else the scoring flow."""
    cfg = config if isinstance(config, SweepConfig) else load_sweep_config(config, overrides)
    if overrides and isinstance(config, SweepConfig):
        cfg = load_sweep_config(cfg.model_dump(mode="json"), overrides)
    with prefect_api() as (api_url, mode), ray_cluster(api_url, cfg.resources.ray_address, num_cpus):
        if cfg.finetune.method == "none":
            from flows.score_sweep import score_sweep as the_flow
        else:
            from flows.benchmark_sweep import benchmark_sweep as the_flow
        # Ray is already initialised above; the flow's task runner reuses it
        result = the_flow(config=cfg.model_dump(mode="json"))
        result["prefect_mode"] = mode
        result["prefect_api_url"] = api_url
        return result
