"""Prefect tasks: thin wrappers of `plop_core.units` (retries, the done-rule shown as `Cached`, resources)."""
