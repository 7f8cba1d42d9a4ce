#!/usr/bin/env python3
"""Writes the reference for `circuit heads` (tests/fixtures/heads/*.json), in float64 torch.

For a model folder (loaded with transformers) and a dataset JSONL, per head:

  ov_copying, ov_positive_share
      eigenvalues of the full (n, n) OV matrix restricted to the dataset's n tokens,
      E_S · diag(γ_l) · W_V · W_O · diag(γ_f) · U_S, formed explicitly (torch.linalg.eigvals);
      copying = Σ Re λ / Σ |λ|; positive share = share of Re λ > 0 among the min(n, d)
      eigenvalues of largest modulus (the other |n − d| of an (n, n) matrix of rank ≤ d are 0,
      and so are not counted; the Rust side decomposes the smaller factor product instead).
  few_tokens
      (the built-in model only) the OV scores again on the first 10 of those tokens, fewer than
      d = 16, where the Rust side decomposes the (n, n) product rather than the (d, d) one.
  qk_singular_values
      the d largest singular values of the full (D, D) matrix
      diag(γ_l)·W_Q · (diag(γ_l)·W_K)ᵀ / √d (torch.linalg.svdvals); null for Qwen3, whose
      per-head q/k norms make the QK circuit no bilinear form of the residual stream.
  previous_token, duplicate_token, induction
      from transformers' own attention patterns (output_attentions=True), with
      TransformerLens-style detection masks (previous: the sub-diagonal; duplicate: earlier
      positions holding the query's token; induction: that mask shifted one key to the right),
      averaged over the queries each mask has a 1 in (see docs/semantics.md).

The dataset's tokens are every id of its prompts (as the model's tokenizer.json encodes them,
with the tokenizer's special tokens) and of its answers and distractors.

    /tmp/venv/bin/python scripts/heads_reference.py   # rewrites tests/fixtures/heads/

The built-in model's dataset (seqcont.numerals, template form, 64 prompts, seed 0) is written
by the release binary (`circuit dataset ... -o`), so build it first: `cargo build --release`.
"""

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "heads"
STORIES = ROOT.parent.parent / "shared" / "models" / "stories260K"


def load_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def builtin_numerals():
    """The built-in dataset of circuits/toy-seqcont/numerals_template.circuit, as JSONL."""
    binary = ROOT / "target" / "release" / "circuit"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "numerals.jsonl"
        subprocess.run(
            [binary, "dataset", "seqcont.numerals", "--n", "64", "--seed", "0",
             "--form", "template", "-o", path],
            check=True,
        )
        return load_jsonl(path)


def prompt_text(record):
    if "prompt" in record:
        return record["prompt"]
    text = record["template"]
    for name, value in record["fillers"].items():
        text = text.replace("{" + name + "}", value)
    return text


def head_weights(model, layer):
    """(γ_l, W_Q, W_K, W_V, W_O) of one layer in the row-vector convention: W_Q (D, H·d),
    W_K and W_V (D, Hkv·d), W_O (H·d, D)."""
    kind = model.config.model_type
    if kind == "gpt2":
        block = model.transformer.h[layer]
        gamma = block.ln_1.weight
        w = block.attn.c_attn.weight  # (D, 3D), Conv1D stores (in, out)
        d_model = w.shape[0]
        return (gamma, w[:, :d_model], w[:, d_model:2 * d_model], w[:, 2 * d_model:],
                block.attn.c_proj.weight)
    if kind in ("llama", "qwen3"):  # Qwen3's q_norm/k_norm only touch q and k (no QK entry)
        block = model.model.layers[layer]
        a = block.self_attn
        return (block.input_layernorm.weight, a.q_proj.weight.T, a.k_proj.weight.T,
                a.v_proj.weight.T, a.o_proj.weight.T)
    raise SystemExit(f"no weight mapping for model_type {kind}")


def final_norm(model):
    if model.config.model_type == "gpt2":
        return model.transformer.ln_f.weight
    return model.model.norm.weight


def attention_scores(model, prompts):
    """Per layer and head: previous, duplicate and induction means over qualifying queries."""
    n_layers = model.config.num_hidden_layers
    n_heads = model.config.num_attention_heads
    sums = torch.zeros(n_layers, n_heads, 3, dtype=torch.float64)
    counts = torch.zeros(3, dtype=torch.float64)
    for ids in prompts:
        tokens = torch.tensor(ids)
        t = len(ids)
        with torch.no_grad():
            out = model(tokens[None], output_attentions=True)
        previous = torch.diag(torch.ones(t - 1, dtype=torch.float64), -1)
        same = (tokens[:, None] == tokens[None, :]).double()
        duplicate = torch.tril(same, -1)  # earlier positions holding the query's token
        induction = torch.zeros_like(duplicate)
        induction[:, 1:] = duplicate[:, :-1]  # the key right after each earlier occurrence
        has_earlier = duplicate.sum(1) > 0
        masks = [previous, duplicate, induction]
        rows = [torch.arange(t) > 0, has_earlier, has_earlier]
        for i, (mask, row) in enumerate(zip(masks, rows)):
            counts[i] += row.sum()
            for layer, pattern in enumerate(out.attentions):  # (1, H, T, T)
                p = pattern[0].double()
                sums[layer, :, i] += (p * mask)[:, row, :].sum(dim=(1, 2))
    means = [[[None if counts[i] == 0 else (sums[l, h, i] / counts[i]).item() for i in range(3)]
              for h in range(n_heads)] for l in range(n_layers)]
    return means, [int(c) for c in counts]


def ov_scores(e_s, u_s, gamma, v, o, d):
    """Copying score and positive share of the full (n, n) OV matrix on the rows e_s (n, D)
    and columns u_s (D, n), formed explicitly."""
    ov = (e_s * gamma) @ v @ o @ u_s  # (n, n)
    lam = torch.linalg.eigvals(ov)
    lam = lam[torch.argsort(lam.abs(), descending=True)][: min(e_s.shape[0], d)]
    return (lam.real.sum() / lam.abs().sum()).item(), (lam.real > 0).double().mean().item()


def reference(name, model_dir, records, title, few=None):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="eager")
    model.eval()
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    prompts = [tokenizer.encode(prompt_text(r)).ids for r in records]
    ids = set()
    for r, p in zip(records, prompts):
        ids.update(p)
        for key in ("answer", "distractor"):
            if r.get(key) is not None:
                ids.update(tokenizer.encode(r[key], add_special_tokens=False).ids)
    tokens = sorted(ids)
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    # Per-head q/k norms (Qwen3): the QK circuit is no bilinear form, so it has no singular
    # values (`circuit heads` leaves the column out); the attention and OV scores stay defined.
    qk_defined = cfg.model_type != "qwen3"
    w_e = model.get_input_embeddings().weight.detach()  # (V, D)
    w_u = model.get_output_embeddings().weight.detach().T  # (D, V)
    gamma_f = final_norm(model).detach()
    e_s = w_e[tokens]  # (n, D)
    u_s = gamma_f[:, None] * w_u[:, tokens]  # (D, n)
    attention, counts = attention_scores(model, prompts)
    heads, few_heads = [], []
    with torch.no_grad():
        for layer in range(cfg.num_hidden_layers):
            gamma, w_q, w_k, w_v, w_o = (x.detach() for x in head_weights(model, layer))
            for head in range(n_heads):
                kv = head // (n_heads // n_kv)
                q = gamma[:, None] * w_q[:, head * d:(head + 1) * d]
                k = gamma[:, None] * w_k[:, kv * d:(kv + 1) * d]
                v = w_v[:, kv * d:(kv + 1) * d]
                o = w_o[head * d:(head + 1) * d, :]
                copying, positive = ov_scores(e_s, u_s, gamma, v, o, d)
                qk = (q @ k.T) / math.sqrt(d)  # (D, D), formed in full
                sigma = torch.linalg.svdvals(qk)[:d].tolist() if qk_defined else None
                prev, dup, ind = attention[layer][head]
                if few is not None:
                    few_copying, few_positive = ov_scores(
                        e_s[:few], u_s[:, :few], gamma, v, o, d)
                    few_heads.append({"head": f"{layer}.{head}", "ov_copying": few_copying,
                                      "ov_positive_share": few_positive})
                heads.append({
                    "head": f"{layer}.{head}",
                    "ov_copying": copying,
                    "ov_positive_share": positive,
                    "qk_singular_values": sigma,
                    "previous_token": prev,
                    "duplicate_token": dup,
                    "induction": ind,
                })
    fixture = {
        "what": title,
        "made_by": "scripts/heads_reference.py (torch float64; transformers attention patterns)",
        "tokens": tokens,
        "previous_token_queries": counts[0],
        "repeated_token_queries": counts[1],
        "heads": heads,
    }
    if few is not None:
        # The OV circuit on fewer tokens than d: the (n, n) product is the smaller one.
        fixture["few_tokens"] = {"tokens": tokens[:few], "heads": few_heads}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT / (name + '.json')}: {len(heads)} heads, {len(tokens)} tokens")


def main():
    only = set(sys.argv[1:])
    jobs = {
        "toy_seqcont_numerals_template": lambda: reference(
            "toy_seqcont_numerals_template", ROOT / "models" / "toy-seqcont", builtin_numerals(),
            "circuits/toy-seqcont/numerals_template.circuit: the built-in model on "
            "seqcont.numerals(n = 64, seed = 0, form = \"template\")", few=10),
        "stories260K_pronoun": lambda: reference(
            "stories260K_pronoun", STORIES, load_jsonl(ROOT / "circuits" / "stories260K" / "pronoun.jsonl"),
            "circuits/stories260K/pronoun.circuit: stories260K on pronoun.jsonl"),
        "qwen3_digits": lambda: reference(
            "qwen3_digits", ROOT / "tests" / "fixtures" / "models" / "qwen3-bf16",
            load_jsonl(OUT / "qwen3_digits.jsonl"),
            "tests/fixtures/models/qwen3-bf16 (per-head q/k norms, head_dim 12 != 40 / 4, "
            "grouped-query, a 3-key window on layers 1 and 2) on tests/fixtures/heads/qwen3_digits.jsonl"),
    }
    for name, job in jobs.items():
        if not only or name in only:
            job()


if __name__ == "__main__":
    main()
