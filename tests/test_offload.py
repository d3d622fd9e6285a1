"""Scoring models bigger than memory: accelerate offload (CPU and disk) gives the in-memory numbers.

Tiny fixed-seed models are saved as sharded safetensors (several shards per model) and loaded three ways
besides in memory: disk offload (a max_memory budget that fits no decoder block), a mixed map (some
blocks resident, the rest on disk), and CPU offload (accelerate's `cpu_offload`: every weight on meta,
materialized from a CPU copy per forward; on a GPU box the same path is `device_map="auto"` with a small
GPU budget). Every estimator, fused (Phi-3) and packed-experts (Mixtral, Qwen2-MoE) models included.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from plop_core.baselines import weight_id
from plop_core.models import load_model, plan_loading
from plop_core.nfn import score_nfn
from plop_core.offload import align_hook, layer_sizes, read_parameter
from tests.tiny import tiny_model, tiny_tokenizer

FAST = dict(n_bootstrap=50, progress=False, baseline_cache=False, batch_size=3, max_length=48)
ARCHS = ["llama", "phi3", "mixtral", "qwen2_moe"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PLOP_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """arch -> folder holding the tiny model as >= 4 safetensors shards plus its tokenizer."""
    out = {}
    for arch in ARCHS:
        d = tmp_path_factory.mktemp(f"sharded_{arch}")
        tiny_model(arch).save_pretrained(d, max_shard_size="100KB")
        tiny_tokenizer().save_pretrained(d)
        assert len(list(d.glob("*.safetensors"))) >= 4
        out[arch] = d
    return out


def _budget(folder, blocks: float) -> int:
    """A cpu budget holding `blocks` decoder blocks plus the activations of FAST's batches."""
    plan = plan_loading(str(folder), batch_size=FAST["batch_size"], max_length=FAST["max_length"], progress=False)
    from transformers import AutoConfig

    from plop_core.offload import activation_bytes

    act = activation_bytes(AutoConfig.from_pretrained(folder), FAST["batch_size"], FAST["max_length"], 4)
    return int(plan.largest_layer[1] * (1 + blocks) + act + 1024)


def _loaded(folder, mode, tmp_path):
    if mode == "memory":
        return load_model(str(folder), progress=False)
    if mode == "cpu_offload":
        from accelerate import cpu_offload

        lm = load_model(str(folder), progress=False)
        cpu_offload(lm.model, execution_device=torch.device("cpu"))
        return lm
    return _offloaded(folder, 0 if mode == "disk" else 1.2, tmp_path / mode)


def _offloaded(folder, blocks, offload_folder):
    plan = plan_loading(str(folder), max_memory={"cpu": _budget(folder, blocks)}, offload_folder=str(offload_folder),
                        batch_size=FAST["batch_size"], max_length=FAST["max_length"], progress=False)
    return load_model(str(folder), plan=plan, progress=False)


def _our_hooks(model) -> int:
    torch_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    sequential = sum(type(getattr(m, "_hf_hook", None)).__name__ == "SequentialHook" for m in model.modules())
    return torch_hooks + sequential


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_offloaded_scores_equal_in_memory_scores(arch, sharded, tmp_path, texts):
    _check_equal(sharded[arch], arch, ("probe", "reference", "analytic"), ("disk", "mixed", "cpu_offload"),
                 tmp_path, texts)


def test_offloaded_experts_scores_equal_in_memory_scores(sharded, tmp_path, texts):
    """The fast subset of the matrix above: packed experts, disk offload, every estimator."""
    _check_equal(sharded["mixtral"], "mixtral", ("probe", "reference", "analytic"), ("disk",), tmp_path, texts)


def _check_equal(folder, arch, estimators, modes, tmp_path, texts):
    ref_model = _loaded(folder, "memory", tmp_path)
    ref = {est: score_nfn(ref_model.model, ref_model.tokenizer, texts, estimator=est, **FAST) for est in estimators}
    for mode in modes:
        lm = _loaded(folder, mode, tmp_path)
        metas = [p for p in lm.model.parameters() if p.is_meta]
        assert metas, f"{mode}: nothing was offloaded"
        if mode == "disk":
            assert set(lm.model.hf_device_map.values()) == {"disk"} or "disk" in lm.model.hf_device_map.values()
        if mode == "mixed":
            assert {"cpu", "disk"} <= set(lm.model.hf_device_map.values())
        hooks_before = _our_hooks(lm.model)
        for est, want in ref.items():
            got = score_nfn(lm.model, lm.tokenizer, texts, estimator=est, **FAST)
            for table in ("modules", "parts"):
                a, b = getattr(want, table), getattr(got, table)
                assert len(a) == len(b)
                for col in () if len(a) == 0 else ("feature_norm", "baseline_norm", "nfn"):
                    np.testing.assert_allclose(b[col], a[col], rtol=1e-5, err_msg=f"{arch} {mode} {est} {table}.{col}")
            np.testing.assert_allclose(got.per_sequence["num"], want.per_sequence["num"], rtol=1e-5)
            np.testing.assert_array_equal(got.per_sequence["count"], want.per_sequence["count"])
        assert _our_hooks(lm.model) == hooks_before  # our hooks are gone, accelerate's are intact
        assert all(p.is_meta for p in metas)  # and the weights went back to meta
        out = lm.model(**lm.tokenizer(texts[:2], return_tensors="pt", padding=True))  # still a working model
        assert torch.isfinite(out.logits).all()


def test_offloaded_weights_are_read_one_tensor_at_a_time(sharded, tmp_path):
    folder = sharded["mixtral"]
    mem = load_model(str(folder), progress=False).model
    lm = _offloaded(folder, 0, tmp_path / "off")
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.experts.gate_up_proj"):
        param = lm.model.get_parameter(name)
        assert param.is_meta and align_hook(lm.model.get_submodule(name.rsplit(".", 1)[0])).offload
        torch.testing.assert_close(read_parameter(lm.model, name), mem.get_parameter(name), rtol=0, atol=0)
        # the baseline cache keys offloaded weights by the checkpoint files' sha256 (no bytes hashed)
        assert weight_id(lm.model, name, param).startswith(f"files-sha256:{lm.identity.sha256}|{name}")
    assert lm.identity.device_map and "disk" in lm.identity.device_map


def test_too_small_budget_names_the_smallest_that_works(sharded):
    folder = sharded["llama"]
    sizes = layer_sizes(load_model(str(folder), progress=False).model)
    with pytest.raises(ValueError) as e:
        plan_loading(str(folder), max_memory=["cpu=100KB"], offload_folder="/tmp/unused", batch_size=3,
                     max_length=48, progress=False)
    msg = str(e.value)
    assert msg.startswith("max_memory cpu=97.66 KiB is too small: the largest layer (model.layers.0, ")
    assert "the smallest budget that works is about cpu=" in msg and "--max-memory cpu=" in msg
    smallest = int(msg.split("--max-memory cpu=")[1].split("MiB")[0]) * 2**20
    assert smallest >= max(sizes.values())
    plan_loading(str(folder), max_memory=[f"cpu={smallest}B"], offload_folder="/tmp/h12-unused", batch_size=3,
                 max_length=48, progress=False)  # the budget it names does work


def test_disk_offload_without_folder_says_so(sharded):
    with pytest.raises(ValueError, match=r"do not fit in max_memory and must go to disk: pass --offload-folder"):
        plan_loading(str(sharded["llama"]), max_memory={"cpu": _budget(sharded["llama"], 0)},
                     batch_size=3, max_length=48, progress=False)


def _mount_tmpfs(path, options):
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); needs root in a container")


def test_full_or_read_only_offload_folder_is_a_clear_error(sharded, tmp_path):
    budget = [f"cpu={_budget(sharded['llama'], 0)}B"]
    ro, full = tmp_path / "ro", tmp_path / "full"
    _mount_tmpfs(ro, "ro,size=1m")
    _mount_tmpfs(full, "size=64k")
    try:
        try:
            with open(full / "filler", "wb") as f:
                f.write(b"\0" * 128 * 1024)
        except OSError:
            pass  # the tmpfs is now full
        for folder, why in ((ro, "is on a read-only file system"), (full, "is on a full disk")):
            with pytest.raises(ValueError) as e:
                plan_loading(str(sharded["llama"]), max_memory=budget, offload_folder=str(folder / "off"),
                             batch_size=FAST["batch_size"], max_length=FAST["max_length"], progress=False)
            assert str(e.value).startswith(f"offload folder {folder / 'off'} {why}; pass --offload-folder on a "
                                           "writable disk"), str(e.value)
    finally:
        subprocess.run(["umount", str(ro)])
        subprocess.run(["umount", str(full)])
