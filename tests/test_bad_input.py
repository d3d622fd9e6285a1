"""Bad input, as users meet it: every case runs `python -m flows.cli ...` (the `plop` console script) in a subprocess and asserts the
exit status, that stderr names the field or file and the fix (an exact key phrase), that no traceback is
printed, and that nothing was written (the --out folder and the results root do not exist afterwards).

No case loads model weights: validation and preflight must fail first (a tiny saved model stands in for
a real one where a folder is needed). The weights-integrity cases at the end damage a copy of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plop_core.assets import ASSET_FORMAT

ROOT = Path(__file__).resolve().parents[1]
ASSET = "smollm2-135m-instruct"  # a known asset name; the tests plant a tiny fake of it in a temp PLOP_HOME

GOOD_ROWS = [{"id": str(i), "text": f"row {i}: 12 + {i} = {12 + i}"} for i in range(40)]
SWEEP = """
name: bad-input
models:
  - id: {tiny}
    name: tiny
tasks: [{d}/good.jsonl]
sampling: {{n_samples: 8, max_length: 32}}
outputs: {{root: {d}/root, experiment: bad-input}}
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory, llama_dir):
    """A folder of data files, sweep YAMLs and model folders, good and bad (cheap to build: no weights)."""
    d = tmp_path_factory.mktemp("bad_input")
    (d / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD_ROWS))
    (d / "bad.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    (d / "list_rows.jsonl").write_text('{"text": "ok"}\n[1, 2]\n')
    (d / "empty.jsonl").write_text("")
    (d / "header_only.csv").write_text("text,label\n")
    (d / "cols.csv").write_text("a,b\n1,2\n")
    (d / "latin1.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    (d / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (d / "notes.txt").write_text("text\n")
    (d / "broken.json").write_text('[{"text": "a"},')
    (d / "a_file").write_text("not a folder")
    (d / "sweep.yaml").write_text(SWEEP.format(tiny=llama_dir, d=d))
    (d / "syntax.yaml").write_text("name: x\nmodels: [a\ntasks: [b]\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "typo.yaml").write_text(SWEEP.format(tiny=llama_dir, d=d) + "samplng: {n_samples: 4}\n")
    no_config = d / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((llama_dir / "model.safetensors").read_bytes())
    pickled = d / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((llama_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    for name, damage in {"truncated": "truncate", "bad_header": "header"}.items():
        m = d / name
        m.mkdir()
        for f in llama_dir.iterdir():
            (m / f.name).write_bytes(f.read_bytes())
        w = m / "model.safetensors"
        data = w.read_bytes()
        w.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:8] + b"{not json" + data[17:])
    return d


def plop(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PLOP_DEBUG")}
    e.update(PYTHONPATH=str(ROOT), COLUMNS="200", **(env or {}))
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=600)


def _sub(args: tuple[str, ...], d: Path, tiny: Path) -> list[str]:
    return [a.format(d=d, tiny=tiny) for a in args]


SCORE = ("score", "--model", "{tiny}", "--data", "{d}/good.jsonl", "--n-samples", "8", "--max-length", "32",
         "--out", "{d}/out")
DRY = ("sweep", "{d}/sweep.yaml", "--dry-run")
TASKS = ("tasks", "show")

# (argv, exit status, key phrase of stderr). {d}: the work folder, {tiny}: a tiny saved model.
CASES = [
    # ---- plop score: flags, model, data, output (all before any weights load)
    pytest.param((*SCORE, "--n-samples", "0"), 2, "--n-samples 0: Input should be greater than or equal to 1",
                 id="score-n-samples-0"),
    pytest.param((*SCORE, "--batch-size", "0"), 2, "--batch-size 0: Input should be greater than or equal to 1",
                 id="score-batch-size-0"),
    pytest.param((*SCORE, "--k", "0"), 2, "--k 0: Input should be greater than or equal to 1", id="score-k-0"),
    pytest.param((*SCORE, "--max-length", "0"), 2, "--max-length 0: Input should be greater than or equal to 1",
                 id="score-max-length-0"),
    pytest.param((*SCORE, "--dtype", "float8"), 2, "argument --dtype: invalid choice: 'float8'", id="score-dtype"),
    pytest.param((*SCORE, "--strategy", "best"), 2, "argument --strategy: invalid choice: 'best'",
                 id="score-strategy"),
    pytest.param((*SCORE, "--estimator", "exact"), 2, "argument --estimator: invalid choice", id="score-estimator"),
    pytest.param((*SCORE, "--n-samples", "many"), 2, "argument --n-samples: invalid int value: 'many'",
                 id="score-n-samples-text"),
    pytest.param((*SCORE, "--model", "./missing-model"), 2, "model path './missing-model' does not exist; check the path",
                 id="score-model-missing"),
    pytest.param((*SCORE, "--model", "smolllm-135m"), 2, "is not a local folder or an offline asset, and the hub is offline",
                 id="score-model-unknown-name"),
    pytest.param((*SCORE, "--model", "{d}/a_file"), 2, "is a file, not a folder; pass the folder that holds config.json",
                 id="score-model-file"),
    pytest.param((*SCORE, "--model", "{d}/no_config"), 2, "has no config.json; pass a folder made by save_pretrained",
                 id="score-model-no-config"),
    pytest.param((*SCORE, "--model", "{d}/pickled"), 2, "plop loads safetensors only", id="score-model-pickle-only"),
    pytest.param((*SCORE, "--model", "{d}/truncated"), 2, "truncated; restore the folder from its source",
                 id="score-weights-truncated"),
    pytest.param((*SCORE, "--model", "{d}/bad_header"), 2, "its header is not valid safetensors JSON: damaged", id="score-weights-bad-header"),
    pytest.param((*SCORE, "--max-length", "100000"), 2, "--max-length: 100000 exceeds the 256 positions of --model",
                 id="score-max-length-over-positions"),
    pytest.param((*SCORE, "--data", "{d}/missing.jsonl"), 2, "missing.jsonl' not found; give an existing",
                 id="score-data-missing"),
    pytest.param((*SCORE, "--data", "{d}/bad.jsonl"), 2, "bad.jsonl line 2 is not valid JSON", id="score-data-bad-jsonl"),
    pytest.param((*SCORE, "--data", "{d}/empty.jsonl"), 2, "empty.jsonl has no rows; give a file with at least one record",
                 id="score-data-empty"),
    pytest.param((*SCORE, "--data", "{d}/cols.csv"), 2, "cols.csv: cannot tell which column holds the text",
                 id="score-data-no-text-column"),
    pytest.param((*SCORE, "--data", "{d}/good.jsonl", "--text-column", "body"), 2,
                 "missing column(s) text_column='body'; columns found: ['id', 'text']", id="score-data-wrong-column"),
    pytest.param((*SCORE, "--data", "{d}/bad.parquet"), 2, "bad.parquet is not a readable .parquet file",
                 id="score-data-bad-parquet"),
    pytest.param((*SCORE, "--data", "{d}/notes.txt"), 2, "unsupported file type '.txt'; use one of",
                 id="score-data-txt"),
    pytest.param((*SCORE, "--data", "gsm8k", "--text-column", "text"), 2,
                 "apply to local files and hub ids, not to the registered task 'gsm8k'", id="score-task-with-column"),
    pytest.param((*SCORE, "--data", "gsm9k"), 2, "unknown task 'gsm9k'; known tasks:", id="score-task-unknown"),
    pytest.param((*SCORE, "--out", "{d}/a_file"), 2, "a_file is a file, not a folder; choose another --out",
                 id="score-out-is-file"),
    pytest.param((*SCORE, "--out", "/sys/plop-out"), 2, "--out: /sys/plop-out is not writable: permission denied",
                 id="score-out-unwritable"),
    # ---- plop tasks
    pytest.param((*TASKS, "gsm9k"), 2, "unknown task 'gsm9k'; known tasks:", id="tasks-unknown"),
    pytest.param((*TASKS, "{d}/list_rows.jsonl"), 2, "list_rows.jsonl: record 2 is not a JSON object",
                 id="tasks-jsonl-not-object"),
    pytest.param((*TASKS, "{d}/header_only.csv"), 2, "header_only.csv has no rows", id="tasks-csv-header-only"),
    pytest.param((*TASKS, "{d}/latin1.csv"), 2, "latin1.csv is not UTF-8 text (byte 8); save it as UTF-8",
                 id="tasks-csv-not-utf8"),
    pytest.param((*TASKS, "{d}/broken.json"), 2, "broken.json is not a readable .json file", id="tasks-json-broken"),
    pytest.param((*TASKS, "{d}/good.jsonl", "--prompt-column", "text"), 2,
                 "give both prompt_column and answer_column", id="tasks-prompt-without-answer"),
    pytest.param((*TASKS, "{d}/good.jsonl", "--out", "/sys/plop-sample.parquet"), 2, "permission denied",
                 id="tasks-out-unwritable"),
    # ---- plop assets
    pytest.param(("assets", "fetch", "smollm3"), 2, "unknown offline asset 'smollm3'", id="assets-fetch-unknown"),
    pytest.param(("assets", "verify", "gemma-270m"), 2, "Did you mean gemma3-270m?", id="assets-verify-unknown"),
    pytest.param(("assets", "path", "nope"), 2, "unknown offline asset 'nope'", id="assets-path-unknown"),
    # ---- plop compare flags (validated before any model loads)
    pytest.param(("compare", "--model", "{tiny}", "--task", "{d}/good.jsonl", "--arms", "plop,qq", "--out", "{d}/out"), 2,
                 "unknown arm 'qq' (did you mean 'q'?)", id="compare-arm-unknown"),
    pytest.param(("compare", "--model", "{tiny}", "--task", "{d}/good.jsonl", "--arms", "plop,plop", "--out", "{d}/out"),
                 2, "arm 'plop' is listed twice; list each arm once", id="compare-arm-twice"),
    pytest.param(("compare", "--model", "{tiny}", "--task", "{d}/good.jsonl", "--arms", ",", "--out", "{d}/out"), 2,
                 "--arms []: List should have at least 1 item", id="compare-arms-empty"),
    pytest.param(("compare", "--model", "{tiny}", "--task", "{d}/good.jsonl", "--seeds", "0,x", "--out", "{d}/out"), 2,
                 "--seeds '0,x' must be comma-separated integers", id="compare-seeds-text"),
    pytest.param(("compare", "--model", "{tiny}", "--task", "{d}/good.jsonl", "--seeds", "-1", "--out", "{d}/out"), 2,
                 "--seeds -1: Input should be greater than or equal to 0", id="compare-seeds-negative"),
    pytest.param(("compare", "--model", "{tiny}", "--task", "{d}/good.jsonl", "--metrics", "bleu", "--out", "{d}/out"), 2,
                 "--metrics 'bleu': Input should be 'nll', 'exact_match' or 'multiple_choice'", id="compare-metric-unknown"),
    # ---- sweep YAML files
    pytest.param(("sweep", "{d}/missing.yaml", "--dry-run"), 2, "missing.yaml' not found; see deploy/sweeps/",
                 id="yaml-missing"),
    pytest.param(("sweep", "{d}/syntax.yaml", "--dry-run"), 2, "syntax.yaml is not valid YAML", id="yaml-syntax"),
    pytest.param(("sweep", "{d}/list.yaml", "--dry-run"), 2, "list.yaml must hold a mapping of sections",
                 id="yaml-not-mapping"),
    pytest.param(("sweep", "{d}/typo.yaml", "--dry-run"), 2, "samplng: unknown field; check the spelling",
                 id="yaml-unknown-section"),
    # ---- --set overrides, validated by the schema
    pytest.param((*DRY, "--set", "sampling.n_samples"), 2, "must look like key.sub=value", id="set-no-equals"),
    pytest.param((*DRY, "--set", "sampling.n_sample=4"), 2, "sampling.n_sample: unknown field", id="set-unknown-key"),
    pytest.param((*DRY, "--set", "sampling.n_samples=lots"), 2, "sampling.n_samples: Input should be a valid integer",
                 id="set-not-int"),
    pytest.param((*DRY, "--set", "models.0=x"), 2, "'models' is not a section; set the whole value instead",
                 id="set-into-list"),
    pytest.param((*DRY, "--set", "models=[{{id: a, name: m}}, {{id: b, name: m}}]"), 2,
                 "models[0] (id 'a') and models[1] (id 'b') have the same label 'm'", id="set-duplicate-model-names"),
    pytest.param((*DRY, "--set", "models=[smollm2-135m-instruct, ./x/smollm2-135m-instruct]"), 2,
                 "have the same label 'smollm2-135m-instruct', so their results would mix; give each a distinct `name:`",
                 id="set-duplicate-derived-labels"),
    pytest.param((*DRY, "--set", "models=[{{id: a, name: ../up}}]"), 2, "name '../up' is not a safe folder name",
                 id="set-model-name-dotdot"),
    pytest.param((*DRY, "--set", "models=['..']"), 2, "id '..' gives no usable folder name; add `name: my-model`",
                 id="set-model-id-dotdot"),
    pytest.param((*DRY, "--set", "tasks=[gsm8k, arithmetic, gsm8k]"), 2,
                 "tasks[0] ('gsm8k') and tasks[2] ('gsm8k') are the same task", id="set-duplicate-tasks"),
    pytest.param((*DRY, "--set", "tasks=[a/x.jsonl, b/x.jsonl]"), 2, "share the label 'x' used in paths",
                 id="set-tasks-same-label"),
    pytest.param((*DRY, "--set", "finetune_tasks=[rte]"), 2, "finetune_tasks ['rte'] are not in tasks",
                 id="set-finetune-task-unknown"),
    pytest.param((*DRY, "--set", "finetune.method=sft", "--set", "finetune.arms=[plop, attn, qkvo]"), 2,
                 "unknown arm 'qkvo'", id="set-arm-unknown"),
    pytest.param((*DRY, "--set", "finetune.method=sft", "--set", "finetune.arms=[]"), 2,
                 "finetune.arms: List should have at least 1 item", id="set-arms-empty"),
    pytest.param((*DRY, "--set", "finetune.method=sft", "--set", "finetune.seeds=[]"), 2,
                 "finetune.seeds: List should have at least 1 item", id="set-seeds-empty"),
    pytest.param((*DRY, "--set", "finetune.method=sft", "--set", "finetune.seeds=[0, -3]"), 2,
                 "finetune.seeds.1: Input should be greater than or equal to 0", id="set-seed-negative"),
    pytest.param((*DRY, "--set", "finetune.method=grpo", "--set", "finetune.rewards=[formatting]"), 2,
                 "unknown GRPO reward 'formatting' (did you mean 'format'?)", id="set-reward-unknown"),
    pytest.param((*DRY, "--set", "selection.strategy=best"), 2, "selection.strategy: Input should be 'plop'",
                 id="set-strategy-unknown"),
    pytest.param((*DRY, "--set", "outputs.experiment=../../../x"), 2,
                 "experiment '../../../x' must be a plain name, not a path", id="set-experiment-escapes"),
    pytest.param((*DRY, "--set", "outputs.experiment=/tmp/x"), 2, "experiment '/tmp/x' must be a plain name",
                 id="set-experiment-absolute"),
    pytest.param((*DRY, "--set", "outputs.root=s3://"), 2, "outputs.root: 's3://' names no bucket; use "
                 "s3://bucket/prefix", id="set-root-s3-no-bucket"),
    pytest.param((*DRY, "--set", "outputs.root=gs://b/x"), 2, "outputs.root: 'gs://b/x': gs:// is not supported",
                 id="set-root-unknown-scheme"),
    # ---- preflight (sweep --dry-run): every problem at once, nothing started
    pytest.param((*DRY, "--set", "sampling.max_length=4096"), 2,
                 "sampling.max_length: 4096 exceeds the 256 positions of models[0]", id="preflight-max-length"),
    pytest.param((*DRY, "--set", "finetune.method=sft", "--set", "finetune.max_length=1024"), 2,
                 "finetune.max_length: 1024 exceeds the 256 positions", id="preflight-finetune-max-length"),
    pytest.param((*DRY, "--set", "models=[./nope]"), 2, "models[0]: model path './nope' does not exist",
                 id="preflight-model-missing"),
    pytest.param((*DRY, "--set", "tasks=[{d}/empty.jsonl]"), 2, "tasks[0]: empty.jsonl has no rows",
                 id="preflight-task-empty"),
    pytest.param((*DRY, "--set", "sampling.split=dev"), 2, "sampling.split: task '{d}/good.jsonl' has no split 'dev'; use one of all, train, eval",
                 id="preflight-split"),
    pytest.param((*DRY, "--set", "outputs.root=/sys/plop-results"), 2,
                 "outputs.root: /sys/plop-results is not writable: permission denied", id="preflight-root-unwritable"),
    pytest.param((*DRY, "--set", "outputs.mlflow_uri=http://127.0.0.1:9"), 2,
                 "outputs.mlflow_uri: MLflow server http://127.0.0.1:9 is not reachable", id="preflight-mlflow-down"),
    pytest.param((*DRY, "--set", "outputs.mlflow_uri=file:///tmp/mlruns"), 2, "is an MLflow file store",
                 id="preflight-mlflow-file-store"),
    pytest.param((*DRY, "--set", "models=[./nope]", "--set", "sampling.split=dev", "--set",
                  "outputs.mlflow_uri=http://127.0.0.1:9"), 2, "preflight found 3 problems (nothing was started)",
                 id="preflight-all-at-once"),
]


def test_unreachable_object_store_root_is_a_preflight_problem(work, tmp_path):
    """outputs.root: s3://... whose endpoint refuses connections: one problem naming outputs.root, in seconds,
    and no staging folder made."""
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "AWS_REGION": "us-east-1", "PLOP_STAGE_DIR": str(tmp_path / "stage")}
    r = plop(*_sub(DRY, work, work), "--set", "outputs.root=s3://plop-nowhere/x", cwd=work, env=env)
    assert r.returncode == 2 and "preflight found 1 problem" in r.stderr, r.stderr
    assert "outputs.root: cannot write to s3://plop-nowhere/x (" in r.stderr and "AWS_ENDPOINT_URL" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr and not (tmp_path / "stage").exists()


@pytest.mark.parametrize(("argv", "status", "phrase"), CASES)
def test_bad_input(work, llama_dir, argv, status, phrase):
    if "/sys/" in " ".join(argv) and os.access("/sys", os.W_OK) and not Path("/sys/class").exists():
        pytest.skip("no unwritable /sys on this machine")
    r = plop(*_sub(argv, work, llama_dir), cwd=work)
    out = r.stdout + r.stderr
    assert r.returncode == status, out
    assert phrase.format(d=work) in r.stderr, r.stderr
    assert "Traceback" not in out
    assert r.stderr.startswith(("plop ", "usage: plop")), r.stderr
    assert not (work / "out").exists() and not (work / "root").exists()
    assert not list(work.glob(".plop-preflight-*"))


def test_good_sweep_passes_dry_run_and_writes_nothing(work, llama_dir):
    """The control for the matrix: the same base config passes preflight, and --dry-run creates no root."""
    r = plop(*_sub(DRY, work, llama_dir), cwd=work)
    assert r.returncode == 0, r.stderr
    assert "preflight ok: 1 model(s), 1 task(s)" in r.stderr and json.loads(r.stdout)["name"] == "bad-input"
    assert not (work / "root").exists() and not list(work.glob(".plop-preflight-*"))


def test_disk_floor(work, llama_dir):
    r = plop(*_sub(DRY, work, llama_dir), cwd=work, env={"PLOP_MIN_FREE_GB": "1e9"})
    assert r.returncode == 2 and "GB free under" in r.stderr and "free space or choose another outputs.root" in r.stderr


@pytest.mark.slow  # imports TRL (about 10 s) to read its config classes' fields
def test_trl_override_typo(work, llama_dir):
    r = plop(*_sub(DRY, work, llama_dir), "--set", "finetune.method=sft", "--set", "finetune.overrides={weight_decy: 0.1}",
             cwd=work)
    assert r.returncode == 2
    assert "override 'weight_decy' is not a field of trl.SFTConfig (method sft) (did you mean 'weight_decay'?)" in r.stderr


def test_debug_shows_traceback(work, llama_dir):
    for argv, env in ((("--debug", "tasks", "show", "gsm9k"), None), (("tasks", "show", "gsm9k", "--debug"), None),
                      (("tasks", "show", "gsm9k"), {"PLOP_DEBUG": "1"})):
        r = plop(*argv, cwd=work, env=env)
        assert r.returncode == 1 and "Traceback" in r.stderr and "UnknownTaskError" in r.stderr


# ---------------------------------------------------------------- weights integrity (offline asset manifest)


def _fake_asset(home: Path, llama_dir: Path) -> Path:
    """A tiny model planted as the fetched asset ASSET in a temp PLOP_HOME, with a true manifest."""
    from plop_core.models import weights_sha256

    d = home / "assets" / ASSET
    d.mkdir(parents=True)
    for f in llama_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / "plop_asset.json").write_text(json.dumps({"format": ASSET_FORMAT, "name": ASSET,
                                                   "weights_sha256": weights_sha256(d, cache=False)}))
    return d


def _flip_byte_keep_mtime(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size - 3)
        b = f.read(1)
        f.seek(st.st_size - 3)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_flipped_byte_with_mtime_restored_is_caught(tmp_path, llama_dir, monkeypatch):
    home = tmp_path / "home"
    d = _fake_asset(home, llama_dir)
    monkeypatch.setenv("PLOP_HOME", str(home))
    from plop_core.assets import ChecksumError
    from plop_core.models import resolve, weights_sha256

    good = weights_sha256(d)  # seeds the digest cache, as a first load would
    assert resolve(ASSET, progress=False) == ("asset", ASSET, d)
    _flip_byte_keep_mtime(d / "model.safetensors")
    assert weights_sha256(d) != good  # the cache follows the content (ctime), not name/size/mtime
    with pytest.raises(ChecksumError, match=f"plop assets fetch {ASSET} --force"):
        resolve(ASSET, progress=False)
    r = plop("score", "--model", ASSET, "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "out"),
             cwd=tmp_path, env={"PLOP_HOME": str(home)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"differs from its manifest's {_manifest_sha(d)[:16]}" in r.stderr
    assert f"check it with `plop assets verify {ASSET}` and rebuild it with `plop assets fetch {ASSET} --force`" in r.stderr
    assert not (tmp_path / "out").exists()
    v = plop("assets", "verify", ASSET, cwd=tmp_path, env={"PLOP_HOME": str(home)})
    assert v.returncode == 1 and f"Rebuild it with `plop assets fetch --force {ASSET}`" in v.stdout


def _manifest_sha(d: Path) -> str:
    return json.loads((d / "plop_asset.json").read_text())["weights_sha256"]


def test_truncated_asset_names_the_repair(tmp_path, llama_dir, monkeypatch):
    home = tmp_path / "home"
    d = _fake_asset(home, llama_dir)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    monkeypatch.setenv("PLOP_HOME", str(home))
    from plop_core.assets import ChecksumError
    from plop_core.models import resolve

    with pytest.raises(ChecksumError, match=rf"truncated; check it with `plop assets verify {ASSET}`"):
        resolve(ASSET, progress=False)


# ---------------------------------------------------------------- deployment parameters (the flow's own validation)

def _flow_config(work: Path, tiny: Path, **changes) -> dict:
    import yaml

    cfg = yaml.safe_load(SWEEP.format(tiny=tiny, d=work))
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = cfg
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


# (changes to the good config as `section__field=value`, field Prefect names, key phrase of the message)
FLOW_CASES = [
    pytest.param({"models": [{"id": "a", "name": "m"}, {"id": "b", "name": "m"}]}, "config.models",
                 "models[0] (id 'a') and models[1] (id 'b') have the same label 'm'", id="flow-duplicate-model-names"),
    pytest.param({"sampling__n_samples": 0}, "config.sampling.n_samples", "Input should be greater than or equal to 1",
                 id="flow-n-samples-0"),
    pytest.param({"samplng": {"n_samples": 4}}, "config.samplng", "unknown field", id="flow-unknown-section"),
    pytest.param({"finetune": {"method": "sft", "arms": ["plop", "qkvo"]}}, "config.finetune.arms",
                 "unknown arm 'qkvo'", id="flow-unknown-arm"),
    pytest.param({"finetune": {"method": "sft", "seeds": [0, -3]}}, "config.finetune.seeds.1",
                 "Input should be greater than or equal to 0", id="flow-negative-seed"),
    pytest.param({"outputs__experiment": "../../../x"}, "config.outputs.experiment",
                 "must be a plain name, not a path", id="flow-experiment-escapes"),
    pytest.param({"models": [{"id": "a", "name": "../up"}]}, "config.models.0.name", "is not a safe folder name",
                 id="flow-model-name-dotdot"),
    pytest.param({"tasks": ["gsm8k", "arithmetic", "gsm8k"]}, "config.tasks", "are the same task",
                 id="flow-duplicate-tasks"),
    pytest.param({"selection__strategy": "best"}, "config.selection.strategy", "Input should be 'plop'",
                 id="flow-strategy-unknown"),
    pytest.param({"models": []}, "config.models", "at least 1 item", id="flow-no-models"),
]


@pytest.mark.server
@pytest.mark.parametrize(("changes", "field", "phrase"), FLOW_CASES)
def test_flow_parameters(work, llama_dir, prefect_api, changes, field, phrase):
    """A deployment (or a script) calls `flows.sweep.plop_sweep(config=...)` with a config dict: Prefect's
    parameter validation runs the schema before any work; the run is Failed with the field in its message,
    and the error the caller gets explains in one line with the field (plop_core.errors.explain), status 2."""
    from flows.sweep import plop_sweep
    from plop_core.errors import exit_status, explain

    state = plop_sweep(config=_flow_config(work, llama_dir, **changes), return_state=True)
    assert state.is_failed() and f"{field}: " in state.message
    with pytest.raises(Exception) as e:
        state.result()
    msg = explain(e.value)
    assert msg.startswith("invalid flow parameters: ") and f"{field}: " in msg and phrase in msg, msg
    assert "\n" not in msg and exit_status(e.value) == 2
    assert not (work / "root").exists()
