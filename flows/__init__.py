"""Prefect flows: the scoring sweep, the benchmark sweep and its per-cell subflow; `run_sweep` runs one
locally (embedded Prefect server + local Ray unless PREFECT_API_URL / RAY_ADDRESS point elsewhere)."""

from flows.run import run_sweep

__all__ = ["run_sweep"]
