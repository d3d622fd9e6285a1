"""Write a random-weight Llama-architecture checkpoint as sharded bf16 safetensors, one shard at a time.

Usage:
    .venv/bin/python benchmarks/build_random_llama.py --out /tmp/llama-7b --layers 32      # 7.4 B parameters
    .venv/bin/python benchmarks/build_random_llama.py --out /tmp/llama-4l --layers 4       # same width, 1.3 B

Why: the big-model benchmark (benchmarks/bench_offload.py) needs a >= 7B checkpoint on a 24 GiB CPU box
with no hub access. The model is never held whole: each decoder layer (~436 MB in bf16) is drawn from a
per-tensor seeded generator, written as its own shard and freed before the next one, so peak memory is one
layer. Shape: Llama-2/3-7B width (hidden 4096, 32 heads, 8 KV heads, intermediate 14336, RMSNorm) with the
SmolLM2 tokenizer's vocabulary (49152) so real text can be tokenized; weights ~ N(0, 0.02^2) (the
`initializer_range` of LlamaConfig), norms 1. The folder holds config.json, the shards, a
model.safetensors.index.json and the SmolLM2 tokenizer files (from the offline asset under $PLOP_HOME).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HIDDEN, INTER, HEADS, KV_HEADS, VOCAB = 4096, 14336, 32, 8, 49152


def config_dict(layers: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
            "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS, "head_dim": HIDDEN // HEADS, "vocab_size": VOCAB,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "tie_word_embeddings": False, "hidden_act": "silu", "initializer_range": 0.02,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "dtype": "bfloat16"}


def _randn(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8],
                                                       "little") & ((1 << 63) - 1))
    return torch.randn(shape, generator=gen, dtype=torch.bfloat16).mul_(0.02)


def layer_tensors(i: int, seed: int) -> dict[str, torch.Tensor]:
    p, hd = f"model.layers.{i}.", HIDDEN // HEADS
    shapes = {"self_attn.q_proj.weight": (HEADS * hd, HIDDEN), "self_attn.k_proj.weight": (KV_HEADS * hd, HIDDEN),
              "self_attn.v_proj.weight": (KV_HEADS * hd, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, HEADS * hd),
              "mlp.gate_proj.weight": (INTER, HIDDEN), "mlp.up_proj.weight": (INTER, HIDDEN),
              "mlp.down_proj.weight": (HIDDEN, INTER)}
    out = {p + k: _randn(p + k, s, seed) for k, s in shapes.items()}
    out[p + "input_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
    out[p + "post_attention_layernorm.weight"] = torch.ones(HIDDEN, dtype=torch.bfloat16)
    return out


def build(out: Path, layers: int, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    n_shards = layers + 2
    weight_map, total, t0 = {}, 0, time.perf_counter()
    groups = [("embed", None)] + [("layer", i) for i in range(layers)] + [("head", None)]
    for k, (kind, i) in enumerate(groups):
        if kind == "embed":
            tensors = {"model.embed_tokens.weight": _randn("model.embed_tokens.weight", (VOCAB, HIDDEN), seed)}
        elif kind == "head":
            tensors = {"lm_head.weight": _randn("lm_head.weight", (VOCAB, HIDDEN), seed),
                       "model.norm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16)}
        else:
            tensors = layer_tensors(i, seed)
        name = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        for t_name, t in tensors.items():
            weight_map[t_name] = name
            total += t.numel()
        del tensors  # one shard in memory at a time
        print(f"  shard {k + 1}/{n_shards} written ({time.perf_counter() - t0:.0f} s)", flush=True)
    index = {"metadata": {"total_size": total * 2, "total_parameters": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (out / "config.json").write_text(json.dumps(config_dict(layers), indent=1))
    _copy_tokenizer(out)
    print(f"{out}: {total / 1e9:.2f} B parameters, {total * 2 / 2**30:.1f} GiB bf16, {n_shards} shards, "
          f"{time.perf_counter() - t0:.0f} s")
    return out


def _copy_tokenizer(out: Path) -> None:
    from plop_core.assets import asset_path

    src = asset_path("smollm2-135m-instruct")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / f).exists():
            shutil.copy(src / f, out / f)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (outside the repository: ~15 GB for 32 layers)")
    p.add_argument("--layers", type=int, default=32, help="decoder layers (32: 7.4 B parameters)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    build(Path(args.out), args.layers, args.seed)


if __name__ == "__main__":
    main()
