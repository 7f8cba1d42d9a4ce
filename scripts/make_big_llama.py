"""Writes a Llama-shaped model folder with random BF16 weights, for memory and load-time
benchmarks of `circuit` on models of billions of parameters (issue 17; docs/performance.md).

Not a fixture: the folder is GBs, so write it under /tmp and delete it afterwards. The shards are
written directly (safetensors header + raw little-endian BF16 bytes) with numpy, one tensor at a
time, so the script needs little memory whatever the shape.

    /tmp/venv/bin/python scripts/make_big_llama.py --shape llama-3.2-1b /tmp/big-1b
    /tmp/venv/bin/python scripts/make_big_llama.py --shape llama-3-8b --sparse /tmp/big-8b

`--sparse` writes the headers and leaves the data as holes in the files (zeros, no disk used):
enough to test what happens before the weights are read (the memory estimate), not to run.
The tokenizer is stories260K's (512 ids, fewer than the embedding's rows: allowed).
"""

import argparse
import json
import os
import struct
from pathlib import Path

import numpy as np

SHAPES = {
    # Llama-3.2-1B's sizes (without its rope_scaling, which the engine does not implement).
    "llama-3.2-1b": dict(hidden=2048, mlp=8192, layers=16, heads=32, kv_heads=8, vocab=128256, tied=True),
    # Llama-3-8B's sizes.
    "llama-3-8b": dict(hidden=4096, mlp=14336, layers=32, heads=32, kv_heads=8, vocab=128256, tied=False),
}
STORIES = Path("/work/shared/models/stories260K")
SHARD_BYTES = 5 << 30


def tensors(s):
    d, m, hd = s["hidden"], s["mlp"], s["hidden"] // s["heads"]
    yield "model.embed_tokens.weight", (s["vocab"], d)
    for i in range(s["layers"]):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (d,)
        yield f"{p}.self_attn.q_proj.weight", (s["heads"] * hd, d)
        yield f"{p}.self_attn.k_proj.weight", (s["kv_heads"] * hd, d)
        yield f"{p}.self_attn.v_proj.weight", (s["kv_heads"] * hd, d)
        yield f"{p}.self_attn.o_proj.weight", (d, s["heads"] * hd)
        yield f"{p}.post_attention_layernorm.weight", (d,)
        yield f"{p}.mlp.gate_proj.weight", (m, d)
        yield f"{p}.mlp.up_proj.weight", (m, d)
        yield f"{p}.mlp.down_proj.weight", (d, m)
    yield "model.norm.weight", (d,)
    if not s["tied"]:
        yield "lm_head.weight", (s["vocab"], d)


def random_bf16(rng, shape, is_norm):
    """BF16 bits of N(0, 0.02) weights (norm weights around 1), truncated from f32."""
    n = int(np.prod(shape))
    x = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
    if is_norm:
        x += np.float32(1.0)
    return (x.view(np.uint32) >> 16).astype("<u2").tobytes()


def write_shard(path, entries, rng, sparse):
    header, offset = {}, 0
    for name, shape in entries:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        if sparse:
            f.truncate(8 + len(text) + offset)
            return
        for name, shape in entries:
            f.write(random_bf16(rng, shape, name.endswith("norm.weight")))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, required=True)
    parser.add_argument("--sparse", action="store_true")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    s = SHAPES[args.shape]
    args.out.mkdir(parents=True, exist_ok=False)
    rng = np.random.default_rng(0)

    shards, current, size = [], [], 0
    for name, shape in tensors(s):
        bytes_ = int(np.prod(shape)) * 2
        if current and size + bytes_ > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += bytes_
    shards.append(current)
    weight_map = {}
    for i, entries in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_shard(args.out / file, entries, rng, args.sparse)
        weight_map.update({name: file for name, _ in entries})
    (args.out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": s["hidden"],
        "intermediate_size": s["mlp"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "vocab_size": s["vocab"],
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": s["tied"],
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=1))
    os.symlink(STORIES / "tokenizer.json", args.out / "tokenizer.json")
    total = sum(int(np.prod(shape)) for _, shape in tensors(s))
    print(f"{args.out}: {args.shape}, {total} parameters, {len(shards)} shard(s){' (sparse)' if args.sparse else ''}")


if __name__ == "__main__":
    main()
