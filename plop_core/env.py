"""Process environment defaults: offline hubs, no telemetry, project-local state.

Why: on air-gapped machines hub lookups time out (3-10x slower runs) and telemetry calls log errors.
Every default here is `setdefault`: a user's explicit environment always wins (e.g. unset
HF_HUB_OFFLINE=1 by exporting HF_HUB_OFFLINE=0 to use a hub).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DEFAULTS = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


def plop_home() -> Path:
    """Cache root for offline assets and probe baselines: $PLOP_HOME or the user cache dir."""
    return Path(os.environ.get("PLOP_HOME") or platformdirs.user_cache_dir("plop")).expanduser()


def setup_offline_env(offline: bool | None = None) -> None:
    """Apply safe defaults. `offline=None` keeps HF_HUB_OFFLINE as set, defaulting to offline."""
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False", "")
    flag = "1" if offline else "0"
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, flag)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "false", "False", "")
