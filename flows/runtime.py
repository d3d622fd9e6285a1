"""Where a sweep runs: the Prefect API it reports to and the Ray cluster its cells run on.

Embedded mode (no PREFECT_API_URL): Prefect's ephemeral mode would start a temporary server in every
process, and every Ray worker would start its own (slow, and the task runs land in throwaway DBs). So
`prefect_api()` starts ONE local `prefect server` on 127.0.0.1 (a free port, state in $PREFECT_HOME)
for the duration of the sweep, points the driver at it and hands its URL to the Ray workers; it is
stopped at the end (its database stays, so `prefect server start` later shows the runs).
Server mode (PREFECT_API_URL set): used as is. Ray: RAY_ADDRESS (or resources.ray_address) joins that
cluster; otherwise a local Ray starts in-process with the machine's CPUs and a short temp dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

if not os.environ.get("RAY_ADDRESS"):
    # A local Ray keeps its ports on loopback (127.0.0.1); by default it binds the machine's address.
    # Ray reads this switch when it is imported, hence before prefect_ray; joining a cluster is unaffected.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from prefect.task_runners import TaskRunner  # noqa: E402
from prefect_ray import RayTaskRunner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Environment every Ray worker gets (in addition to PREFECT_API_URL and PYTHONPATH).
WORKER_ENV_KEYS = (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_HOME",
    "TOKENIZERS_PARALLELISM", "PLOP_HOME", "PLOP_CODE_VERSION", "PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED",
    "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "RAY_USAGE_STATS_ENABLED", "MLFLOW_TRACKING_URI",
    "PLOP_MODEL_CACHE_SIZE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "PLOP_STAGE_DIR",
    # an s3:// results root (plop_core.storage): where the store is; credentials are never passed along (each
    # node brings its own: AWS_* environment, a profile or an instance role)
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def local_prefect_server(home: str | Path | None = None, startup_timeout: float = 180.0):
    """Run `prefect server start` on 127.0.0.1:<free port>; yields its API URL; stops it on exit."""
    port = _free_port()
    home = Path(home or os.environ.get("PREFECT_HOME") or ROOT / ".prefect").resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    log = open(home / f"server-{port}.log", "w")
    # the server runs under flows/watchdog.py: if this process dies without its `finally` (kill -9),
    # the watchdog sees its parent gone and stops the server and everything the server started
    server = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([sys.executable, str(ROOT / "flows" / "watchdog.py"), "--parent", str(os.getpid()),
                             "--grace", "20", "--", *server], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + startup_timeout
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the local Prefect server did not start (see {log.name}); "
                                   f"or start one yourself and export PREFECT_API_URL")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the watchdog passes SIGINT on: uvicorn shuts down cleanly (gotcha 12)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the watchdog leads the server's process group
                proc.wait(10)
        log.close()


@contextlib.contextmanager
def prefect_api():
    """Yield (api_url, mode): the configured server ("server") or a local one for this sweep ("embedded")."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if url:
        yield url, "server"
        return
    with local_prefect_server() as url:
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                try:
                    yield url, "embedded"
                finally:  # ship buffered logs before the server goes away
                    from prefect.logging.handlers import APILogWorker

                    APILogWorker.drain_all(timeout=10)
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old


def worker_env(api_url: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in WORKER_ENV_KEYS if os.environ.get(k)}
    env["PREFECT_API_URL"] = api_url
    # per-step dataset-preparation bars from many workers interleave into noise; Prefect shows progress per task
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", os.environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"))
    from plop_core.artifacts import code_version

    env["PLOP_CODE_VERSION"] = code_version()  # workers key caches exactly like the driver
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def ray_init_kwargs(api_url: str, address: str | None = None, num_cpus: int | None = None) -> dict:
    """Arguments for ray.init: join `address`/$RAY_ADDRESS, or start locally with the machine's CPUs."""
    kw: dict = {"runtime_env": {"env_vars": worker_env(api_url)}, "namespace": "plop",
                "log_to_driver": True}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        kw["address"] = address
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kw.update(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                  _temp_dir=os.environ.get("PLOP_RAY_TMP", f"/tmp/plop-ray-{os.getuid()}"),
                  object_store_memory=512 * 2**20)
    return kw


@contextlib.contextmanager
def ray_cluster(api_url: str, address: str | None = None, num_cpus: int | None = None):
    """Initialise Ray for the sweep unless it already is (then the caller's Ray is reused and kept)."""
    import ray

    if ray.is_initialized():
        yield False
        return
    ray.init(**ray_init_kwargs(api_url, address, num_cpus))
    try:
        yield True
    finally:
        from tasks.hosts import release_kept

        release_kept()  # model hosts kept for the next sweep end with this Ray session
        ray.shutdown()



class PlopRayTaskRunner(RayTaskRunner):
    """RayTaskRunner that starts Ray at the first submitted task, not when the flow run begins (so the
    flow validates its config and runs preflight first: a bad config fails in seconds with nothing
    started). When it starts Ray itself (e.g. in a deployment's flow run) it passes the Prefect API URL,
    PYTHONPATH and offline flags to the workers and keeps Ray's temp dir short; when Ray is already
    initialised (plop sweep, tests) it reuses that Ray as RayTaskRunner does."""

    def __init__(self, address: str | None = None, init_kwargs: dict | None = None, num_cpus: int | None = None):
        super().__init__(address=address, init_kwargs=init_kwargs)
        self.num_cpus = num_cpus
        self._ray_started = False

    def duplicate(self):
        return type(self)(address=self.address, init_kwargs=self.init_kwargs, num_cpus=self.num_cpus)

    def __enter__(self):
        self._ray_started = False
        return TaskRunner.__enter__(self)  # Ray: at the first submit (_start_ray)

    def _start_ray(self) -> None:
        import ray
        from prefect.settings import PREFECT_API_URL

        if not ray.is_initialized():
            api = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
            kw = ray_init_kwargs(api, self.address, self.num_cpus)
            self.address = kw.pop("address", None)
            self.init_kwargs = {**kw, **self.init_kwargs}
        self._started = False  # RayTaskRunner.__enter__ starts the base runner again, then ray.init
        try:
            RayTaskRunner.__enter__(self)
        except BaseException:
            # RayTaskRunner.__exit__ would call ray.get_runtime_context(), which starts a default Ray
            # (dashboard, /tmp/ray) when ray.init failed; nothing of ours is running, so do not own it
            self._owns_ray = False
            raise
        self._ray_started = True

    def __exit__(self, *exc_info):
        if self._ray_started:
            return super().__exit__(*exc_info)
        return TaskRunner.__exit__(self, *exc_info)  # Ray was never started (no task, or a bad config)

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        if self._started and not self._ray_started:
            self._start_ray()
        return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)


def ensure_ray() -> bool:
    """Start Ray now when this flow run's task runner is the lazy PlopRayTaskRunner (a deployment's flow
    run: Ray would otherwise start only at the first submitted task, after scoring chose how to run).
    True when Ray is up; False under another task runner (`resources.use_ray: false`)."""
    import ray
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None)
    if not ray.is_initialized() and isinstance(runner, PlopRayTaskRunner) and not runner._ray_started:
        runner._start_ray()
    return ray.is_initialized()


def ray_task_runner(**kw) -> PlopRayTaskRunner:
    """The task runner of the sweep flows (see PlopRayTaskRunner)."""
    return PlopRayTaskRunner(**kw)
