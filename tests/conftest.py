"""Test environment: offline, no telemetry, project-local state dirs; shared tiny-model fixtures."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for k, v in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90", "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}.items():
    os.environ.setdefault(k, v)
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))

import contextlib  # noqa: E402

import pytest  # noqa: E402

from tests.tiny import save_tiny, tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture()
def llama(tok):
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """A tiny Llama saved with save_pretrained and loadable by path (exercises the real loading code)."""
    return save_tiny("llama", tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def texts():
    return [
        "Natalia sold clips to 48 of her friends in April.",
        "How many clips did Natalia sell altogether?",
        "def add(a, b): return a + b",
        "The premise entails the hypothesis.",
        "What is 2 + 2? Answer: 4.",
        "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun, and then more.",
    ]


@pytest.fixture(scope="session")
def prefect_api():
    """The one Prefect server of the test session: `.ci/test`'s ($PLOP_TEST_PREFECT_API_URL), else a local
    one on 127.0.0.1 (free port) for the session; the API URL is exported while tests use it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.runtime import local_prefect_server

    url = os.environ.get("PLOP_TEST_PREFECT_API_URL")
    with (contextlib.nullcontext(url) if url else local_prefect_server()) as api:
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = api
        try:
            with temporary_settings(updates={PREFECT_API_URL: api}):
                yield api
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old
