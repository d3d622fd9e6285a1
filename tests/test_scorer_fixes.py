"""Scorer correctness fixes (issue 12), each against an independent fp64 recomputation or a real limit:
bias-free norm in bf16 with large biases, the reference estimator in fp32, per-call counting, the probe
baseline's Monte Carlo error in intervals and stability, the authors' batching for include_padding, the
default on-disk baseline cache, GGUF provenance, and out-of-memory batch backoff under RLIMIT_AS."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from plop_core.baselines import derive_seed
from plop_core.modules import discover_candidates
from plop_core.nfn import score_nfn
from plop_core.stats import bootstrap_modules, bootstrap_types
from tests.conftest import ROOT
from tests.test_nfn import _capture_inputs
from tests.tiny import tiny_model

FAST = dict(n_bootstrap=100, progress=False, baseline_cache=False)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PLOP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_large_bias_in_bfloat16_keeps_the_bias_free_norm_exact(tok, texts):
    model = tiny_model("qwen2").to(torch.bfloat16)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.copy_(300.0 * torch.linspace(-1, 1, proj.bias.numel()))  # ~300x ||W z|| per entry
    s = score_nfn(model, tok, texts, batch_size=len(texts), estimator="analytic", **FAST).modules.set_index("module")
    names = [n for n in s.index if "self_attn" in n and not n.endswith("o_proj")]
    z = _capture_inputs(model, tok, texts, names)
    worst_naive = 0.0
    for n in names:
        lin = model.get_submodule(n)
        w, b, x = lin.weight.double(), lin.bias.double(), z[n].double()
        exact = float(((x @ w.T.detach()).norm(dim=-1) / x.norm(dim=-1)).mean())
        assert s.loc[n, "feature_norm"] == pytest.approx(exact, rel=2e-3), n
        y = lin(z[n].to(torch.bfloat16)).detach().double()  # what the old hook did: ||y - b|| from the rounded output
        naive = float(((y - b).norm(dim=-1) / x.norm(dim=-1)).mean())
        worst_naive = max(worst_naive, abs(naive / exact - 1))
    assert worst_naive > 0.01  # the case is hard: subtracting the bias from bf16 outputs is > 1% off


def test_reference_estimator_multiplies_in_fp32(tok, texts):
    model = tiny_model("llama").to(torch.bfloat16)
    s = score_nfn(model, tok, texts, batch_size=len(texts), estimator="reference", seed=3, **FAST)
    row = s.modules.set_index("module").loc["model.layers.1.mlp.down_proj"]
    w = model.get_submodule("model.layers.1.mlp.down_proj").weight.double()
    gen = torch.Generator().manual_seed(derive_seed(3, "model.layers.1.mlp.down_proj/reference"))
    r = torch.randn(row.n_tokens, w.shape[1], generator=gen, dtype=torch.float32)  # one batch: all real tokens
    r = (r / r.norm(dim=-1, keepdim=True)).double()
    assert row.baseline_norm == pytest.approx(float((r @ w.T).norm(dim=-1).mean()), rel=1e-5)


def test_a_module_called_twice_per_forward_counts_both_calls(tok, texts):
    model = tiny_model("llama")
    model.model.layers[1].mlp = model.model.layers[0].mlp  # weight sharing: one MLP called twice per forward
    s = score_nfn(model, tok, texts, estimator="analytic", **FAST).modules.set_index("module")
    n_tok = sum(len(tok(t)["input_ids"]) for t in texts)
    name0, name1 = "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"
    assert s.loc[name0, "n_tokens"] == s.loc[name1, "n_tokens"] == 2 * n_tok
    store = []
    h = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: store.append(a[0].double()))
    with torch.no_grad():
        for t in texts:
            model(**tok([t], return_tensors="pt"))
    h.remove()
    z = torch.cat([x.reshape(-1, x.shape[-1]) for x in store])
    w = model.model.layers[0].mlp.down_proj.weight.double()
    assert len(z) == 2 * n_tok
    assert s.loc[name0, "feature_norm"] == pytest.approx(float(((z @ w.T).norm(dim=-1) / z.norm(dim=-1)).mean()),
                                                          rel=1e-5)


def test_a_module_that_never_fires_gets_no_tokens(tok, texts, llama):
    from plop_core.modules import Candidate

    llama.model.layers[0].mlp.unused = torch.nn.Linear(64, 128)  # registered, never called
    cands = discover_candidates(llama).candidates
    ghost = Candidate("model.layers.0.mlp.unused", 0, "up", 64, 128, "linear", (), None, 1)
    s = score_nfn(llama, tok, texts, estimator="analytic", candidates=cands + [ghost], **FAST)
    row = s.modules.set_index("module").loc["model.layers.0.mlp.unused"]
    assert row.n_tokens == 0 and np.isnan(row.nfn)
    ref = score_nfn(llama, tok, texts, estimator="analytic", candidates=cands, **FAST)
    np.testing.assert_allclose(s.modules["nfn"][:-1], ref.modules["nfn"], rtol=1e-12)


def test_baseline_monte_carlo_error_enters_the_resamples():
    """No sequence noise at all (every sequence alike): the spread left is the baseline's own error."""
    num, den = np.ones((40, 3)) * [1.0, 2.0, 3.0], np.ones((40, 3))
    rel = np.array([0.01, 0.0, 0.05])
    boot = bootstrap_modules(num, den, 4000, seed=0, baseline_rel_se=rel)
    np.testing.assert_allclose(boot.std(axis=0) / [1.0, 2.0, 3.0], rel, rtol=0.1, atol=1e-12)
    fixed, _ = bootstrap_types(num, den, ["q", "v", "o"], ["q", "v", "o"], 1000, 0.95, 0)
    table, type_boot = bootstrap_types(num, den, ["q", "v", "o"], ["q", "v", "o"], 1000, 0.95, 0,
                                       baseline_rel_se=rel)
    assert (fixed["nfn_ci_high"] - fixed["nfn_ci_low"]).max() < 1e-12
    width = (table["nfn_ci_high"] - table["nfn_ci_low"]).to_numpy()
    np.testing.assert_allclose(width / table["nfn"], 2 * 1.96 * rel, rtol=0.15, atol=1e-12)


def test_probe_intervals_and_stability_include_the_baseline_error(llama, tok, texts):
    coarse = score_nfn(llama, tok, texts, n_probe=8, **FAST)  # 8 probes: a large Monte Carlo error
    m = coarse.modules
    assert (m["nfn_ci_low"] <= m["nfn"]).all() and (m["nfn"] <= m["nfn_ci_high"]).all()
    counts = coarse.per_sequence["num"], coarse.per_sequence["den"]
    seq_only = bootstrap_modules(*counts, 100, 0)
    with_base = bootstrap_modules(*counts, 100, 0, (m["baseline_se"] / m["baseline_norm"]).to_numpy())
    assert (with_base.std(0) > seq_only.std(0)).mean() > 0.8
    ana = score_nfn(llama, tok, texts, estimator="analytic", **FAST).modules  # exact baseline: no extra spread
    assert (ana["baseline_se"] == 0).all()
    from plop_core.plots import nfn_interval_matrix, nfn_matrix

    layers, types, grid = nfn_matrix(m)  # the heatmap's data carries the intervals, cell by cell
    layers2, types2, low, high = nfn_interval_matrix(m)
    assert (layers, types) == (layers2, types2) and (low <= grid).all() and (grid <= high).all()


def test_include_padding_reproduces_the_authors_batches(llama, tok, texts):
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    b = 4
    authors = sum(len(lengths[i:i + b]) * max(lengths[i:i + b]) for i in range(0, len(lengths), b))
    srt = sorted(lengths, reverse=True)
    sorted_count = sum(len(srt[i:i + b]) * max(srt[i:i + b]) for i in range(0, len(srt), b))
    assert authors != sorted_count  # the two batchings differ on these texts
    s = score_nfn(llama, tok, texts, batch_size=b, include_padding=True, **FAST)
    assert s.meta["n_tokens"] == authors and s.meta["batching"].startswith("given order")
    side = tok.padding_side
    tok.padding_side = "left"  # the tokenizer's own side is used, as the authors' code does
    try:
        left = score_nfn(llama, tok, texts, batch_size=b, include_padding=True, **FAST)
    finally:
        tok.padding_side = side
    assert left.meta["n_tokens"] == authors and not np.allclose(left.modules["nfn"], s.modules["nfn"])


def test_baselines_are_cached_under_plop_home_by_default(llama_dir, tok, texts, home):
    from plop_core.models import load_model

    lm = load_model(str(llama_dir), progress=False)
    a = score_nfn(lm.model, lm.tokenizer, texts, n_bootstrap=0, progress=False)
    files = sorted((home / "baselines").glob("*.json"))
    assert len(files) == 14
    assert all("files-sha256:" + lm.identity.sha256 in json.loads(f.read_text())["key"] for f in files)
    stamp = [f.stat().st_mtime_ns for f in files]
    b = score_nfn(lm.model, lm.tokenizer, texts, n_bootstrap=0, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamp  # read, not rewritten
    np.testing.assert_array_equal(a.modules["nfn"], b.modules["nfn"])
    with torch.no_grad():
        lm.model.model.layers[0].mlp.up_proj.weight.mul_(2)  # an edit after loading: keyed by content now
    score_nfn(lm.model, lm.tokenizer, texts, n_bootstrap=0, progress=False)
    assert len(list((home / "baselines").glob("*.json"))) == 15
    score_nfn(lm.model, lm.tokenizer, texts, n_bootstrap=0, progress=False, baseline_cache=False)
    assert len(list((home / "baselines").glob("*.json"))) == 15


@pytest.mark.slow
def test_gguf_dequantized_provenance_is_recorded(monkeypatch, texts):
    from plop_core.models import load_model

    monkeypatch.setenv("PLOP_HOME", str(ROOT / ".plop"))
    lm = load_model("smollm2-135m-instruct", device="cpu", progress=False)
    assert lm.identity.weights_provenance.startswith("GGUF-dequantized: HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)")
    s = score_nfn(lm.model, lm.tokenizer, texts[:2], max_length=16, n_bootstrap=0, progress=False)
    assert s.meta["weights_provenance"] == lm.identity.weights_provenance


_OOM_CHILD = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, {root!r})
    import numpy as np, torch, transformers
    from plop_core.nfn import score_nfn
    from tests.tiny import tiny_tokenizer
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=16384, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, vocab_size=512, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    texts = [("Natalia sold clips to 48 of her friends in April. " * 80)[:1500 + 10 * i] for i in range(16)]
    kw = dict(max_length=512, n_bootstrap=0, progress=False, baseline_cache={{}})  # baselines computed once
    free = score_nfn(model, tok, texts, batch_size=2, **kw)
    vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + {extra}, hard))  # a real limit: allocations beyond it fail
    out = {{}}
    try:
        s = score_nfn(model, tok, texts, batch_size=16, **kw)
        out["backoff"] = s.meta["oom_backoff"]
        out["same"] = bool(np.allclose(s.per_sequence["sum_a"], free.per_sequence["sum_a"], rtol=1e-6))
        out["nfn_same"] = bool(np.allclose(s.modules["nfn"], free.modules["nfn"], rtol=1e-6))
    except MemoryError as e:
        out["error"] = str(e)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    print(json.dumps(out))
""")


def _oom_child(extra_bytes: int) -> dict:
    code = _OOM_CHILD.format(root=str(ROOT), extra=extra_bytes)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_out_of_memory_batches_are_halved_and_give_the_same_scores():
    """RLIMIT_AS set 500 MiB above the process size: a batch of 16 long sequences (its 16384-wide MLP
    activations need over 1 GiB) fails to allocate; halves (of halves) succeed."""
    out = _oom_child(500 * 2**20)
    assert out.get("backoff"), out
    assert out["backoff"][0]["at_sequence"] == 0 and out["backoff"][0]["batch_size"] == 8
    assert out["same"] and out["nfn_same"]


def test_out_of_memory_at_batch_size_one_is_a_clear_error():
    out = _oom_child(20 * 2**20)  # one 512-token sequence needs 3 x 32 MiB of MLP activations
    assert out["error"].startswith("out of memory scoring a batch of 1 sequence(s) of up to 512 tokens on cpu even "
                                   "after halving the batch from 16; lower max_length, or offload the model")
