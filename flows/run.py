"""Run a sweep from this process: Prefect API (embedded local server or $PREFECT_API_URL), Ray (local
or $RAY_ADDRESS), then the sweep flow. Used by `plop sweep` and by the tests."""

from __future__ import annotations

import os

from prefect import tags

from flows.runtime import prefect_api, ray_cluster
from flows.stale import crash_orphan_task_runs, crash_stale_flow_runs, driver_tag
from plop_core.config import SweepConfig, load_sweep_config
from plop_core.errors import sigterm_as_interrupt


def run_sweep(config: SweepConfig | dict | str, overrides: list[str] | None = None,
              num_cpus: int | None = None) -> dict:
    """Validate the config, then run the sweep flow (scoring, plus finetuning where the config asks)."""
    from flows.sweep import plop_sweep

    if isinstance(config, SweepConfig):
        config = config.model_dump(mode="json")
    cfg = load_sweep_config(config, overrides)
    with prefect_api() as (api_url, mode):
        stale = crash_stale_flow_runs()  # flow runs of drivers killed earlier: Crashed, never Running forever
        with tags(driver_tag()):
            if cfg.resources.use_ray:
                # Ray is already initialised here and the flow's task runner reuses it; ray.init replaced the
                # SIGTERM handler with sys.exit(15), which would skip every `finally`: ours again
                with ray_cluster(api_url, cfg.resources.ray_address, num_cpus), sigterm_as_interrupt():
                    state = plop_sweep(config=cfg, return_state=True)
            else:  # Prefect's process pool on this machine (still processes, never threads)
                from prefect.task_runners import ProcessPoolTaskRunner

                runner = ProcessPoolTaskRunner(max_workers=num_cpus or max(1, (os.cpu_count() or 1)))
                state = plop_sweep.with_options(task_runner=runner)(config=cfg, return_state=True)
        crash_orphan_task_runs(state.state_details.flow_run_id)
        result = state.result()  # raises the flow's error (UnitsFailed: partial results, PreflightError, ...)
        result["prefect_mode"] = mode
        result["prefect_api_url"] = api_url
        result["stale_flow_runs_crashed"] = stale
        return result
