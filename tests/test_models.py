"""Model loading and identity: local folders, offline assets, hub ids while offline, bad input."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from plop_core.config import ModelSpec
from plop_core.models import ModelIdentity, identity_key, load_model, weights_sha256
from tests.tiny import save_tiny, tiny_tokenizer


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PLOP_HOME", str(tmp_path / "home"))  # digest sidecars land here, not in the shared cache
    return tmp_path / "home"


def test_local_folder_identity(llama_dir):
    a = load_model(str(llama_dir), progress=False)
    idt = a.identity
    assert idt.source == "local" and idt.path == str(llama_dir.resolve()) and idt.revision is None
    assert idt.architecture == "LlamaForCausalLM" and idt.model_type == "llama" and idt.task == "causal-lm"
    assert idt.num_layers == 2 and idt.dtype == "float32"
    assert idt.n_params == sum(p.numel() for p in a.model.parameters())
    assert idt.sha256 == weights_sha256(llama_dir) and len(idt.sha256) == 64
    assert not a.model.training and a.tokenizer.pad_token == "<pad>" and not idt.pad_from_eos
    out = a.model(**a.tokenizer(["What is 2 + 2?"], return_tensors="pt"))
    assert out.logits.shape[-1] == a.model.config.vocab_size
    b = load_model(ModelSpec(id=str(llama_dir)), progress=False)
    assert b.identity == idt and identity_key(b.identity) == identity_key(idt)
    json.dumps(idt.to_dict())  # recordable with every score


def test_identity_changes_with_weights_and_dtype(llama_dir, tmp_path):
    same = shutil.copytree(llama_dir, tmp_path / "copy")
    base = load_model(str(same), progress=False).identity
    assert identity_key(base) == identity_key(load_model(str(llama_dir), progress=False).identity)  # place-free
    save_tiny("llama", same, seed=1)  # new weights in the same folder: the size/mtime-keyed cache must notice
    changed = load_model(str(same), progress=False).identity
    assert changed.sha256 != base.sha256 and identity_key(changed) != identity_key(base)
    half = load_model(str(llama_dir), dtype="bfloat16", progress=False)
    assert half.identity.dtype == "bfloat16" and next(half.model.parameters()).dtype == torch.bfloat16
    assert identity_key(half.identity) != identity_key(base)


def test_weights_digest_is_cached_and_multi_file(llama_dir, tmp_path, home):
    d = weights_sha256(llama_dir)
    assert list((home / "hashes").glob("*.json"))
    assert weights_sha256(llama_dir, cache=False) == d
    two = shutil.copytree(llama_dir, tmp_path / "two")
    shutil.copy(two / "model.safetensors", two / "extra.safetensors")
    assert weights_sha256(two) not in (d, None)


def test_pad_token_from_eos_is_recorded(tmp_path):
    folder = save_tiny("llama", tmp_path / "nopad")
    tok = copy.deepcopy(tiny_tokenizer())
    tok.pad_token = None
    tok.save_pretrained(folder)
    lm = load_model(str(folder), progress=False)
    assert lm.tokenizer.pad_token == "</s>" and lm.identity.pad_from_eos and lm.identity.pad_token == "</s>"
    assert lm.model.generation_config.pad_token_id is not None


def test_encoder_loads_without_head(tmp_path):
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    folder = tmp_path / "bert"
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    with pytest.raises(ValueError, match="encoder.*task='encoder'"):
        load_model(str(folder), progress=False)
    enc = load_model(str(folder), task="auto", progress=False)
    assert type(enc.model).__name__ == "BertModel" and enc.identity.task == "encoder"
    assert enc.identity.num_layers == 2


def test_hub_id_while_offline_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as e:
        load_model("some-org/surely-not-cached-model", progress=False)
    msg = str(e.value)
    assert "offline" in msg and "plop assets list" in msg and "local folder" in msg
    assert "smollm2-135m-instruct" in msg and "HF_HUB_OFFLINE=0" in msg


def test_hub_id_served_from_offline_cache(llama_dir, tmp_path, monkeypatch):
    """A hub id works offline when the HF cache holds it; the identity records the commit and weight digest."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--plop-test--tiny-llama"
    shutil.copytree(llama_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = load_model("plop-test/tiny-llama", progress=False)
    idt = lm.identity
    assert idt.source == "hub" and idt.revision == commit and idt.path.endswith(commit)
    assert idt.sha256 == weights_sha256(llama_dir)
    assert identity_key(idt) == identity_key(load_model(str(llama_dir), progress=False).identity)


def test_bad_local_paths(tmp_path, llama_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "missing" / "model"), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(empty), progress=False)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(llama_dir / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        load_model(str(pickled), progress=False)
    with pytest.raises(ValueError, match="task"):
        load_model(str(llama_dir), task="seq2seq", progress=False)
    with pytest.raises(ValueError, match="empty model id"):
        load_model(" ", progress=False)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match="not a folder.*offline asset"):
        load_model(str(gguf), progress=False)


def test_identity_key_is_stable_text():
    idt = ModelIdentity(source="hub", id="org/m", path=None, revision="abc", sha256=None, dtype="float32",
                        architecture="X", model_type="llama", n_params=1, num_layers=1, task="causal-lm")
    assert identity_key(idt) == identity_key(idt.to_dict()) == "139b8b71b7b7d07b"  # golden: never changes
    assert identity_key(idt) != identity_key({**idt.to_dict(), "revision": "def"})
    assert len(identity_key(idt)) == 16


# ---------------------------------------------------------------- real offline assets (shared PLOP_HOME)


@pytest.fixture()
def shared_home(monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.setenv("PLOP_HOME", str(ROOT / ".plop"))


@pytest.mark.slow
def test_real_assets_fetch_load_forward(shared_home):
    from plop_core.assets import ASSETS, fetch_asset

    for name in ("smollm2-135m-instruct", "minilm-l6"):
        d = fetch_asset(name)
        manifest = json.loads((d / "plop_asset.json").read_text())
        stamp = (d / "plop_asset.json").stat().st_mtime_ns
        assert fetch_asset(name, progress=False) == d and (d / "plop_asset.json").stat().st_mtime_ns == stamp
        lm = load_model(name, task="auto", device="cpu")
        idt = lm.identity
        assert idt.source == "asset" and idt.path == str(d) and idt.sha256 == manifest["weights_sha256"]
        assert manifest["weights_sha256"] == ASSETS[name].converted_sha256  # conversion is reproducible
        batch = lm.tokenizer(["The capital of France is", "2 + 2 ="], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = lm.model(**batch)
        if name == "smollm2-135m-instruct":
            assert idt.architecture == "LlamaForCausalLM" and idt.num_layers == 30 and idt.n_params == 134515008
            assert idt.asset_source_sha256 == ASSETS[name].gguf_sha256 and idt.task == "causal-lm"
            last = -1 if lm.tokenizer.padding_side == "left" else int(batch["attention_mask"][0].sum()) - 1
            nxt = lm.tokenizer.decode(out.logits[0, last].argmax())
            assert nxt.strip() == "Paris"
        else:
            assert idt.architecture == "BertModel" and idt.num_layers == 6 and idt.n_params == 22713216
            assert idt.task == "encoder" and out.last_hidden_state.shape[-1] == 384
