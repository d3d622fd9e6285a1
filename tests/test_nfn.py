"""NFN scoring engine (plop_core.nfn): golden values against direct computation, estimator agreement,
invariances, uncertainty, error handling, caching, and fused / Conv1D / packed-experts modules."""

import json

import numpy as np
import pytest
import torch

from plop_core.baselines import unit_probes
from plop_core.nfn import NonFiniteActivationError, Scores, score_nfn
from tests.tiny import tiny_model

FAST = dict(n_bootstrap=200, progress=False)


# ---------------------------------------------------------------- independent reference computation
def _capture_inputs(model, tok, texts, names, one_by_one=True):
    """Inputs of `names` at all real tokens, stacked. one_by_one: one text per forward (no padding at
    all); else one right-padded batch whose pad rows are dropped with the attention mask."""
    store = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: store[n].append(args[0].float().clone())) for n in names]
    try:
        with torch.no_grad():
            if one_by_one:
                for t in texts:
                    model(**tok([t], return_tensors="pt"))
                return {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in v]) for n, v in store.items()}
            batch = tok(texts, return_tensors="pt", padding=True)
            model(**batch)
            keep = batch["attention_mask"].bool()
            return {n: v[0][keep] for n, v in store.items()}
    finally:
        for h in hooks:
            h.remove()


def _direct_feature_norm(weight, z):
    """mean over tokens of ||W z|| / ||z||, by explicit matmul (weight (d_out, d_in) fp32)."""
    return float(((z.double() @ weight.double().T).norm(dim=-1) / z.double().norm(dim=-1)).mean())


_SPHERE = {}


def _rho_many(weight, n=200_000, seed=123):
    """Many-sample estimate of rho(W) = E||W u|| and its standard error (unit vectors shared per d_in)."""
    d = weight.shape[1]
    if d not in _SPHERE:
        u = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
        _SPHERE[d] = u / u.norm(dim=-1, keepdim=True)
    vals = (_SPHERE[d] @ weight.float().T).norm(dim=-1).double()
    return float(vals.mean()), float(vals.std() / n ** 0.5)


def test_feature_norm_equals_direct_computation(llama, tok, texts):
    s = score_nfn(llama, tok, texts, batch_size=4, estimator="analytic", **FAST)
    names = s.modules["module"].tolist()
    z = _capture_inputs(llama, tok, texts, names)
    for row in s.modules.itertuples():
        w = llama.get_submodule(row.module).weight.detach()
        assert row.feature_norm == pytest.approx(_direct_feature_norm(w, z[row.module]), rel=1e-5), row.module
        rho = float(w.double().norm() / w.shape[1] ** 0.5)
        assert row.baseline_norm == pytest.approx(rho, rel=1e-6)
        assert row.nfn == pytest.approx(row.feature_norm / rho, rel=1e-6)
        assert row.n_tokens == sum(len(tok(t)["input_ids"]) for t in texts)
    assert len(s.modules) == 14 and set(s.types["type"]) == {"q", "k", "v", "o", "gate", "up", "down"}


def test_probe_and_reference_baselines_match_many_sample_estimate(llama, tok, texts):
    probe = score_nfn(llama, tok, texts, estimator="probe", **FAST).modules.set_index("module")
    ref = score_nfn(llama, tok, texts, estimator="reference", **FAST).modules.set_index("module")
    ana = score_nfn(llama, tok, texts, estimator="analytic", **FAST).modules.set_index("module")
    for name in probe.index:
        w = llama.get_submodule(name).weight.detach()
        rho, rho_se = _rho_many(w)
        for est in (probe, ref):
            se = np.hypot(est.loc[name, "baseline_se"], rho_se)
            assert se > 0
            # 28 comparisons (14 modules x 2 estimators): 3.5 SE keeps the family-wise false alarm near 1%
            assert abs(est.loc[name, "baseline_norm"] - rho) < 3.5 * se, (name, est.loc[name, "baseline_norm"], rho)
        # Jensen: the analytic RMS is an upper bound on rho; the probe estimate sits below it up to its noise
        assert ana.loc[name, "baseline_norm"] >= rho
        assert ana.loc[name, "baseline_norm"] >= probe.loc[name, "baseline_norm"] - 3 * probe.loc[name, "baseline_se"]
        assert probe.loc[name, "nfn_se"] == pytest.approx(
            probe.loc[name, "nfn"] * probe.loc[name, "baseline_se"] / probe.loc[name, "baseline_norm"])
        # same tokens, same a(z): only the baselines differ between estimators
        assert probe.loc[name, "feature_norm"] == ref.loc[name, "feature_norm"] == ana.loc[name, "feature_norm"]


def test_probe_baseline_uses_seeded_unit_vectors(llama, tok, texts):
    name = "model.layers.0.mlp.down_proj"
    s = score_nfn(llama, tok, texts, estimator="probe", n_probe=64, **FAST).modules.set_index("module")
    w = llama.get_submodule(name).weight.detach().float()
    vals = (w @ unit_probes(w.shape[1], 64, 0, name)).norm(dim=0).double()
    assert s.loc[name, "baseline_norm"] == pytest.approx(float(vals.mean()), rel=1e-6)
    assert s.loc[name, "baseline_se"] == pytest.approx(float(vals.std() / 8), rel=1e-6)


def _align(model, tok, texts, strength, rank=8):
    """W <- W (I + c P), P the projector on the top-`rank` directions of the module's own inputs.

    Random-init modules all have NFN ~ 1 (a random W treats every direction alike), so their ranking is
    noise and comparing rankings across estimators would be unfair. Amplifying (c > 0) or damping
    (c < 0) W along the directions the task's inputs actually occupy makes NFN rise or fall by tens of
    percent per type. Modules are edited in forward order (q/k/v then o, gate/up then down) because each
    edit changes the inputs of the modules after it.
    """
    groups = [("self_attn", ("q", "k", "v")), ("self_attn", ("o",)), ("mlp", ("gate", "up")), ("mlp", ("down",))]
    for layer in range(model.config.num_hidden_layers):
        for block, types in groups:
            names = [f"model.layers.{layer}.{block}.{t}_proj" for t in types]
            z = _capture_inputs(model, tok, texts, names[:1], one_by_one=False)[names[0]].double()
            vecs = torch.linalg.eigh(z.T @ z).eigenvectors[:, -rank:]
            proj = vecs @ vecs.T
            for t, n in zip(types, names):
                lin = model.get_submodule(n)
                eye = torch.eye(proj.shape[0], dtype=torch.float64)
                lin.weight.data = (lin.weight.double() @ (eye + strength[t] * proj)).float()
    return model


def test_type_ranking_is_the_same_for_all_estimators(llama, tok, texts):
    strength = {"q": 3.0, "k": 1.5, "gate": 0.8, "up": 0.3, "down": 0.0, "v": -0.5, "o": -0.8}
    model = _align(llama, tok, texts, strength)
    rankings = {}
    for est in ("probe", "reference", "analytic"):
        types = score_nfn(model, tok, texts, estimator=est, **FAST).types
        rankings[est] = types.sort_values("nfn")["type"].tolist()
    assert rankings["probe"] == rankings["reference"] == rankings["analytic"]
    assert rankings["probe"][-2:] == ["k", "q"] and rankings["probe"][0] in ("o", "v")


# ---------------------------------------------------------------- invariances and determinism
def test_padding_and_batching_do_not_change_scores(llama, tok, texts):
    runs = [score_nfn(llama, tok, texts, batch_size=b, estimator="probe", **FAST) for b in (1, 4, len(texts))]
    for other in runs[1:]:
        np.testing.assert_allclose(other.per_sequence["sum_a"], runs[0].per_sequence["sum_a"], rtol=1e-5)
        np.testing.assert_allclose(other.modules["nfn"], runs[0].modules["nfn"], rtol=1e-5)
        np.testing.assert_array_equal(other.per_sequence["count"], runs[0].per_sequence["count"])
    # a much longer neighbour pads every other sequence a lot more: still the same per-sequence sums
    longer = score_nfn(llama, tok, texts + [" ".join(texts) * 2], batch_size=8, **FAST)
    np.testing.assert_allclose(longer.per_sequence["sum_a"][:-1], runs[0].per_sequence["sum_a"], rtol=1e-5)


def test_include_padding_changes_the_scores(llama, tok, texts):
    masked = score_nfn(llama, tok, texts, batch_size=len(texts), **FAST)
    padded = score_nfn(llama, tok, texts, batch_size=len(texts), include_padding=True, **FAST)
    assert padded.meta["n_tokens"] == len(texts) * max(len(tok(t)["input_ids"]) for t in texts)
    assert padded.meta["n_tokens"] > masked.meta["n_tokens"]
    assert not np.allclose(padded.modules["nfn"], masked.modules["nfn"], rtol=1e-4)


@pytest.mark.parametrize("estimator", ["probe", "reference"])
def test_seeded_results(llama, tok, texts, estimator):
    a = score_nfn(llama, tok, texts, estimator=estimator, seed=1, **FAST)
    b = score_nfn(llama, tok, texts, estimator=estimator, seed=1, **FAST)
    c = score_nfn(llama, tok, texts, estimator=estimator, seed=2, **FAST)
    np.testing.assert_array_equal(a.modules["nfn"], b.modules["nfn"])
    np.testing.assert_array_equal(a.types["nfn_ci_low"], b.types["nfn_ci_low"])
    np.testing.assert_array_equal(a.modules["feature_norm"], c.modules["feature_norm"])
    assert (a.modules["baseline_norm"] != c.modules["baseline_norm"]).all()


# ---------------------------------------------------------------- uncertainty
def test_bootstrap_interval_and_stability(llama, tok, texts):
    s = score_nfn(llama, tok, texts, **FAST)
    t = s.types
    assert (t["nfn_ci_low"] <= t["nfn"]).all() and (t["nfn"] <= t["nfn_ci_high"]).all()
    assert (t["layer_min"] <= t["nfn"]).all() and (t["nfn"] <= t["layer_max"]).all()
    assert (t["n_layers"] == 2).all()
    assert s.type_resamples.shape == (200, 7)
    for k in (1, 3, 7):
        assert 0.0 <= s.stability(k) <= 1.0
    assert s.stability(7) == 1.0
    # the type NFN is the mean over layers of the module NFN, and per-sequence sums add up to it
    m = s.modules
    assert t.set_index("type").loc["v", "nfn"] == pytest.approx(m[m["type"] == "v"]["nfn"].mean())
    ps = s.per_sequence
    assert ps["num"].shape == ps["den"].shape == (len(texts), 14)
    np.testing.assert_allclose(ps["num"].sum(0) / ps["den"].sum(0), m["nfn"], rtol=1e-9)
    np.testing.assert_allclose(ps["sum_a"].sum(0) / ps["count"].sum(0), m["feature_norm"], rtol=1e-9)


# ---------------------------------------------------------------- golden numbers (regression guard)
# Computed once by this code (probe, seed 0, n_probe 512) on tiny_model("llama", seed=0) with the
# conftest texts, torch 2.13 CPU. Tolerance 1e-4 relative: well above float32 summation-order noise
# (~1e-6), far below any change of method (a different estimator or masking moves them by > 1e-3).
GOLDEN_TYPE_NFN = {"q": 0.9962292947129026, "k": 0.9791871585966176, "v": 1.0047370921992438,
                   "o": 0.9850260677214099, "gate": 0.9918501777054356, "up": 1.0009483817984597,
                   "down": 1.0056176431124744}


def test_golden_type_table(llama, tok, texts):
    s = score_nfn(llama, tok, texts, **FAST)
    got = dict(zip(s.types["type"], s.types["nfn"]))
    assert got == pytest.approx(GOLDEN_TYPE_NFN, rel=1e-4)


# ---------------------------------------------------------------- errors, cleanup, metadata
def _n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_non_finite_activation_names_the_module_and_cleans_up(llama, tok, texts):
    llama.train()
    tok.padding_side = "left"
    before = _n_hooks(llama)
    with torch.no_grad():
        llama.model.layers[1].self_attn.q_proj.weight[0, 0] = float("nan")
    try:
        with pytest.raises(NonFiniteActivationError, match=r"model\.layers\.1\.self_attn\.q_proj.*bfloat16"):
            score_nfn(llama, tok, texts, **FAST)
        assert _n_hooks(llama) == before
        assert llama.training and tok.padding_side == "left"
    finally:
        tok.padding_side = "right"


def test_hooks_removed_when_the_forward_raises(llama, tok, texts):
    def boom(*_):
        raise KeyboardInterrupt  # e.g. the user stops a long scoring run
    handle = llama.model.layers[1].mlp.register_forward_hook(boom)
    with pytest.raises(KeyboardInterrupt):
        score_nfn(llama, tok, texts, **FAST)
    handle.remove()
    assert _n_hooks(llama) == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(texts=[]), "texts is empty"),
    (dict(texts="one string"), "list of strings"),
    (dict(texts=["", "  "]), "all texts are empty"),
    (dict(max_length=0), "max_length must be"),
    (dict(batch_size=0), "batch_size must be"),
    (dict(estimator="exact"), "probe, reference, analytic"),
])
def test_bad_input_is_named(llama, tok, texts, kwargs, message):
    args = dict(texts=texts) | kwargs
    with pytest.raises(ValueError, match=message):
        score_nfn(llama, tok, **args, **FAST)


def test_missing_pad_token_uses_eos_and_says_so(llama, tok, texts):
    pad = tok.pad_token
    tok.pad_token = None
    try:
        s = score_nfn(llama, tok, texts, batch_size=3, **FAST)
        assert tok.pad_token is None
    finally:
        tok.pad_token = pad
    assert "eos" in s.meta["pad_token_note"]
    ref = score_nfn(llama, tok, texts, batch_size=3, **FAST)
    np.testing.assert_allclose(s.modules["nfn"], ref.modules["nfn"], rtol=1e-6)


def test_meta_truncation_and_empty_texts(llama, tok, texts):
    s = score_nfn(llama, tok, texts + [""], max_length=8, **FAST)
    m = s.meta
    assert m["n_sequences"] == len(texts) and m["dropped_empty"] == [len(texts)]
    assert m["n_tokens"] == sum(min(len(tok(t)["input_ids"]), 8) for t in texts)
    assert m["truncated_share"] == pytest.approx(np.mean([len(tok(t)["input_ids"]) > 8 for t in texts]))
    assert m["estimator"] == "probe" and m["n_probe"] == 512 and m["dtype"] == "float32"
    assert m["torch_version"] == torch.__version__ and m["include_padding"] is False
    assert isinstance(s, Scores) and s.discovery.candidates


def test_bfloat16_model_scores_in_fp32(tok, texts):
    ref = score_nfn(tiny_model("llama"), tok, texts, **FAST)
    bf = score_nfn(tiny_model("llama").to(torch.bfloat16), tok, texts, **FAST)
    assert bf.meta["dtype"] == "bfloat16"
    np.testing.assert_allclose(bf.modules["nfn"], ref.modules["nfn"], rtol=0.05)


# ---------------------------------------------------------------- baseline cache
def test_baseline_cache_dict_and_directory(llama, tok, texts, tmp_path):
    cache = {}
    a = score_nfn(llama, tok, texts, baseline_cache=cache, **FAST)
    assert len(cache) == 14 and all(isinstance(json.dumps(v), str) for v in cache.values())
    key = next(iter(cache))
    cache[key] = {**cache[key], "rho": 123.0}  # a cache hit is used as stored
    b = score_nfn(llama, tok, texts, baseline_cache=cache, **FAST)
    assert sorted(b.modules["baseline_norm"])[-1] == 123.0
    d = tmp_path / "baselines"
    c = score_nfn(llama, tok, texts, baseline_cache=str(d), **FAST)
    assert len(list(d.glob("*.json"))) == 14
    np.testing.assert_array_equal(c.modules["baseline_norm"], a.modules["baseline_norm"])
    with torch.no_grad():  # an edited weight never reuses a stale baseline
        llama.model.layers[0].self_attn.q_proj.weight.mul_(2.0)
    e = score_nfn(llama, tok, texts, baseline_cache=d, **FAST)
    assert len(list(d.glob("*.json"))) == 15
    assert e.modules.loc[0, "baseline_norm"] == pytest.approx(2 * a.modules.loc[0, "baseline_norm"], rel=1e-6)


def test_directory_cache_answer_is_kept_in_memory_until_a_weight_changes(tok, texts, tmp_path):
    model, d = tiny_model("llama"), tmp_path / "baselines"
    a = score_nfn(model, tok, texts, baseline_cache=d, **FAST)
    for f in d.glob("*.json"):
        f.unlink()
    b = score_nfn(model, tok, texts, baseline_cache=d, **FAST)  # answered from memory: no file read or written
    assert list(d.glob("*.json")) == []
    np.testing.assert_array_equal(b.modules["baseline_norm"], a.modules["baseline_norm"])
    with torch.no_grad():  # through .data: _version does not move, the stamp's strided sample (ends at the last value) does
        model.model.layers[1].mlp.down_proj.weight.data[-1, -1] += 1.0
    c = score_nfn(model, tok, texts, baseline_cache=d, **FAST)
    fresh = score_nfn(model, tok, texts, baseline_cache=False, **FAST)
    assert len(list(d.glob("*.json"))) == 14  # every key looked up again (the folder was emptied)
    np.testing.assert_allclose(c.modules["baseline_norm"], fresh.modules["baseline_norm"], rtol=1e-12)
    changed = c.modules["baseline_norm"].to_numpy() != a.modules["baseline_norm"].to_numpy()
    assert c.modules.loc[changed, "module"].tolist() == ["model.layers.1.mlp.down_proj"]


# ---------------------------------------------------------------- fused, Conv1D and packed experts
def _direct_scores(model, tok, texts, cands):
    """{(module, part or None): (feature_norm, analytic nfn)} by explicit matmuls on captured inputs.

    Dense modules: a = ||W[rows] z|| / ||z|| with W from get_weight (Conv1D transposed) and the part's
    exact rows. Packed experts: the experts module's inputs (hidden states, top-k routing) are captured
    and each routed (token, expert) pair is recomputed by hand: a_e for gate_up (or up), and for down
    a_e on act(gate) * up; the module NFN is the mean over pairs of a_e / rho_e (contract).
    """
    from plop_core.modules import get_weight

    out = {}
    dense = [c for c in cands if c.kind != "experts"]
    z = _capture_inputs(model, tok, texts, [c.name for c in dense])
    for c in dense:
        w = get_weight(model, c).double()
        for part, rows in [(None, None), *[(p.type, list(p.rows)) for p in c.parts]]:
            wr = w if rows is None else w[rows]
            a = (z[c.name].double() @ wr.T).norm(dim=-1) / z[c.name].double().norm(dim=-1)
            out[(c.name, part)] = (float(a.mean()), float(a.mean() / (wr.norm() / w.shape[1] ** 0.5)))
    by_module = {}
    for c in cands:
        if c.kind == "experts":
            by_module.setdefault(c.module_name, []).append(c)
    for mod_name, group in by_module.items():
        mod = model.get_submodule(mod_name)
        seen = []
        h = mod.register_forward_pre_hook(lambda m, args, seen=seen: seen.append((args[0].double(), args[1])))
        with torch.no_grad():
            for t in texts:
                model(**tok([t], return_tensors="pt"))
        h.remove()
        up = next(c for c in group if c.param != "down_proj")
        down = next(c for c in group if c.param == "down_proj")
        w_up, w_down = get_weight(model, up).double(), get_weight(model, down).double()
        acc = {k: [] for k in [(up.name, None), (down.name, None), *[(up.name, p.type) for p in up.parts]]}
        for hidden, route in seen:  # all pairs at once: gathered per-pair weights, explicit matmuls
            tok_idx = torch.arange(hidden.shape[0]).repeat_interleave(route.shape[1])
            exp_idx = route.reshape(-1)
            zt, wu, wd = hidden[tok_idx], w_up[exp_idx], w_down[exp_idx]
            hid = torch.einsum("poi,pi->po", wu, zt)
            for part, rows in [(None, None), *[(p.type, list(p.rows)) for p in up.parts]]:
                wr = wu if rows is None else wu[:, rows]
                a = torch.einsum("poi,pi->po", wr, zt).norm(dim=-1) / zt.norm(dim=-1)
                rho = wr.flatten(1).norm(dim=-1) / w_up.shape[-1] ** 0.5
                acc[(up.name, part)] += list(zip(a.tolist(), (a / rho).tolist()))
            gate, upv = hid.chunk(2, dim=-1)
            act = mod.act_fn(gate) * upv
            a = torch.einsum("poi,pi->po", wd, act).norm(dim=-1) / act.norm(dim=-1)
            rho = wd.flatten(1).norm(dim=-1) / w_down.shape[-1] ** 0.5
            acc[(down.name, None)] += list(zip(a.tolist(), (a / rho).tolist()))
        for key, vals in acc.items():
            arr = np.array(vals)
            out[key] = (float(arr[:, 0].mean()), float(arr[:, 1].mean()))
    return out


@pytest.mark.parametrize("arch", ["phi3", "gpt2", "gpt_neox", "mixtral"])
def test_fused_conv1d_and_experts_equal_direct_computation(arch, tok, texts):
    from plop_core.modules import discover_candidates

    model = tiny_model(arch)
    cands = discover_candidates(model).candidates
    kinds = {c.kind for c in cands}
    assert kinds & {"fused", "conv1d", "experts"}, kinds
    s = score_nfn(model, tok, texts, batch_size=4, estimator="analytic", **FAST)  # padding in the batches
    direct = _direct_scores(model, tok, texts, cands)
    rows = [(r.module, None, r) for r in s.modules.itertuples()] + [(r.module, r.type, r) for r in s.parts.itertuples()]
    assert len(rows) == len(direct)
    for module, part, r in rows:
        feature, nfn = direct[(module, part)]
        assert r.feature_norm == pytest.approx(feature, rel=1e-5), (module, part)
        assert r.nfn == pytest.approx(nfn, rel=1e-5), (module, part)
    if "experts" in kinds:
        routed = s.modules[s.modules["kind"] == "experts"]
        k = model.config.num_experts_per_tok
        assert (routed["n_tokens"] == k * s.meta["n_tokens"]).all()  # pairs, not tokens
        assert np.allclose(routed["baseline_norm"], routed["feature_norm"] / routed["nfn"])


@pytest.mark.parametrize("arch", ["gpt_neox", "qwen2_moe"])
def test_other_families_are_batching_invariant_for_every_estimator(arch, tok, texts):
    model = tiny_model(arch)
    for est in ("probe", "reference"):
        one = score_nfn(model, tok, texts, batch_size=1, estimator=est, **FAST)
        many = score_nfn(model, tok, texts, batch_size=len(texts), estimator=est, **FAST)
        np.testing.assert_allclose(many.per_sequence["sum_a"], one.per_sequence["sum_a"], rtol=1e-5)
        assert np.isfinite(many.modules["nfn"]).all() and np.isfinite(many.parts["nfn"]).all()
        assert (many.modules["baseline_se"] > 0).all()


def test_weight_hash_memo_sees_edits_through_data(llama):
    from plop_core.baselines import weight_hash

    w = llama.model.layers[0].mlp.up_proj.weight
    h = weight_hash(w)
    assert weight_hash(w) == h
    w.data.mul_(1.5)  # does not bump w._version
    assert weight_hash(w) != h


def test_no_bootstrap_gives_nan_interval_and_stability(llama, tok, texts):
    s = score_nfn(llama, tok, texts, n_bootstrap=0, progress=False)
    assert s.types["nfn_ci_low"].isna().all() and np.isnan(s.stability(3))
    assert np.isfinite(s.types["nfn"]).all()


def test_discovery_is_reused_until_the_model_changes(tok, texts):
    """Repeated score_nfn calls on one model discover its candidates once; a replaced module (same shape)
    gives a new discovery, and the scores follow the new weights exactly as a fresh discovery's."""
    from plop_core.modules import discover_candidates
    from plop_core.nfn import _resolve_candidates

    model = tiny_model("llama")
    first = _resolve_candidates(model, None)
    assert _resolve_candidates(model, None) is first
    before = score_nfn(model, tok, texts, n_bootstrap=0, progress=False, baseline_cache=False)
    old = model.model.layers[0].mlp.up_proj
    torch.manual_seed(7)
    model.model.layers[0].mlp.up_proj = torch.nn.Linear(old.in_features, old.out_features, bias=False)
    second = _resolve_candidates(model, None)
    assert second is not first and [c.name for c in second.candidates] == [c.name for c in first.candidates]
    after = score_nfn(model, tok, texts, n_bootstrap=0, progress=False, baseline_cache=False)
    fresh = score_nfn(model, tok, texts, n_bootstrap=0, progress=False, baseline_cache=False,
                      candidates=discover_candidates(model))
    up0 = "model.layers.0.mlp.up_proj"
    nfn = lambda s: s.modules.set_index("module")["nfn"]  # noqa: E731
    assert nfn(after)[up0] != pytest.approx(nfn(before)[up0], rel=1e-3)
    np.testing.assert_allclose(nfn(after).to_numpy(), nfn(fresh).to_numpy(), rtol=1e-12)
