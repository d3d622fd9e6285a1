"""Run a sweep from this process: Prefect API (embedded local server or $PREFECT_API_URL), Ray (local
or $RAY_ADDRESS), then the scoring or benchmark flow. Used by `plop sweep` and by the tests."""

from __future__ import annotations

import os

from flows.runtime import prefect_api, ray_cluster
from plop_core.config import SweepConfig, load_sweep_config


def run_sweep(config: SweepConfig | dict | str, overrides: list[str] | None = None,
              num_cpus: int | None = None) -> dict:
    """Validate the config, then run the benchmark flow if it finetunes, else the scoring flow."""
    cfg = config if isinstance(config, SweepConfig) else load_sweep_config(config, overrides)
    if overrides and isinstance(config, SweepConfig):
        cfg = load_sweep_config(cfg.model_dump(mode="json"), overrides)
    if cfg.finetune.method == "none":
        from flows.score_sweep import score_sweep as the_flow
    else:
        from flows.benchmark_sweep import benchmark_sweep as the_flow
    with prefect_api() as (api_url, mode):
        if cfg.resources.use_ray:
            with ray_cluster(api_url, cfg.resources.ray_address, num_cpus):
                # Ray is already initialised here; the flow's task runner reuses it
                result = the_flow(config=cfg.model_dump(mode="json"))
        else:  # Prefect's process pool on this machine (still processes, never threads)
            from prefect.task_runners import ProcessPoolTaskRunner

            runner = ProcessPoolTaskRunner(max_workers=num_cpus or max(1, (os.cpu_count() or 1)))
            result = the_flow.with_options(task_runner=runner)(config=cfg.model_dump(mode="json"))
        result["prefect_mode"] = mode
        result["prefect_api_url"] = api_url
        return result
