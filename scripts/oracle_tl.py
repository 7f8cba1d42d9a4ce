#!/usr/bin/env python3
"""An independent oracle for `circuit eval`: faithfulness of a few circuits computed with
HuggingFace transformers (torch), not with the Rust engine.

How it works: the model is loaded with a custom attention function registered through
transformers' `AttentionInterface`. That function recomputes attention itself in float64
(causal mask, softmax, per-(query, key) terms A[q,k]·v[k]) and applies the ablation to the
per-head outputs z before the model's own output projection:

- node ablation: at query positions where a head is not kept, z is the mean over the reference
  prompts of z at that position;
- QK-edge ablation (edge mean): at a kept query with listed key positions K,
  z[q] = Σ_{k∈K} A[q,k]·v[k] + Σ_{k∉K} mean_ref(A[q,k]·v[k]).

Everything else (embeddings, norms, MLPs, unembedding) is transformers' own code. The metric is
logit_diff at the last position; faithfulness = (m(C) − m(empty)) / (m(full) − m(empty)) with
m averaged over prompts first.

Writes tests/fixtures/oracle/<name>.json: prompts and reference prompts as token ids, circuits as
simple JSON (token indices, not labels), and the expected numbers. Run from the crate root:

    HF_HUB_OFFLINE=1 /tmp/venv/bin/python scripts/oracle_tl.py
"""

import json
import os
import random
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer
from transformers import AttentionInterface, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "oracle"

# Set per run: "record" collects reference means, "ablate" applies a circuit, "off" is clean.
STATE = {"mode": "off", "means": {}, "circuit": None}


def oracle_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager causal attention in float64 with the ablation applied to z. The mask passed in is
    ignored: every batch here holds prompts of one length (no padding), so the causal mask is all
    there is, and it is applied here."""
    layer = module.layer_idx
    batch, n_heads, seq, d_head = query.shape
    group = n_heads // key.shape[1]
    key = key.repeat_interleave(group, dim=1)  # (B, H, T, d): GQA heads expanded
    value = value.repeat_interleave(group, dim=1)  # (B, H, T, d)
    if scaling is None:
        scaling = d_head ** -0.5
    scores = (query.double() @ key.double().transpose(-1, -2)) * scaling  # (B, H, T, T)
    future = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    pattern = torch.softmax(scores, dim=-1)  # (B, H, Tq, Tk)
    terms = pattern[..., None] * value.double()[:, :, None, :, :]  # (B, H, Tq, Tk, d)
    z = terms.sum(dim=3)  # (B, H, T, d)

    if STATE["mode"] == "record":
        STATE["means"][layer] = (z.mean(dim=0), terms.mean(dim=0))  # (H, T, d), (H, Tq, Tk, d)
    elif STATE["mode"] == "ablate":
        mean_z, mean_terms = STATE["means"][layer]
        circuit = STATE["circuit"]
        kept = circuit["kept"]  # (layer, head) -> set of kept query positions
        edges = circuit["edges"]  # (layer, head, query) -> set of kept keys
        z = z.clone()
        for head in range(n_heads):
            for q in range(seq):
                if q not in kept.get((layer, head), set()):
                    z[:, head, q] = mean_z[head, q]
                elif (layer, head, q) in edges:
                    keys = edges[(layer, head, q)]
                    dropped = [k for k in range(q + 1) if k not in keys]
                    z[:, head, q] = terms[:, head, q, sorted(keys)].sum(dim=1) + mean_terms[
                        head, q, dropped
                    ].sum(dim=0)
    return z.transpose(1, 2).to(query.dtype).contiguous(), pattern.to(query.dtype)


AttentionInterface.register("circuit_oracle", oracle_attention)


def end_logit_diff(model, prompts, answers, distractors):
    with torch.no_grad():
        logits = model(torch.tensor(prompts)).logits[:, -1, :].double()  # (B, V)
    rows = torch.arange(len(prompts))
    return (logits[rows, answers] - logits[rows, distractors]).tolist()


def compile_circuit(circuit):
    kept = {}
    for layer, head, positions in circuit["heads"]:
        kept.setdefault((layer, head), set()).update(positions)
    edges = {}
    for layer, head, query, keys in circuit["qk_edges"]:
        edges.setdefault((layer, head, query), set()).update(k for k in keys if k <= query)
    return {"kept": kept, "edges": edges}


def make_fixture(name, model_dir, model_rel, clean, reference, answers, distractors, circuits):
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation="circuit_oracle", dtype=torch.float32
    )
    model.eval()
    with torch.no_grad():
        STATE["mode"] = "record"
        model(torch.tensor(reference))
    STATE["mode"] = "off"
    full = end_logit_diff(model, clean, answers, distractors)
    STATE["mode"] = "ablate"
    STATE["circuit"] = compile_circuit({"heads": [], "qk_edges": []})
    empty = end_logit_diff(model, clean, answers, distractors)
    mean = lambda xs: sum(xs) / len(xs)
    out_circuits = []
    for circuit in circuits:
        STATE["circuit"] = compile_circuit(circuit)
        values = end_logit_diff(model, clean, answers, distractors)
        m_full, m_circuit, m_empty = mean(full), mean(values), mean(empty)
        out_circuits.append(
            dict(
                circuit,
                expected={
                    "full": m_full,
                    "circuit": m_circuit,
                    "empty": m_empty,
                    "faithfulness": (m_circuit - m_empty) / (m_full - m_empty),
                    "per_prompt_circuit": values,
                },
            )
        )
    STATE["mode"] = "off"
    fixture = {
        "generator": "scripts/oracle_tl.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": model_rel,
        "ablation": "mean",
        "edge_ablation": "edge_mean",
        "scope": "heads",
        "metric": "logit_diff",
        "clean": clean,
        "reference": reference,
        "answers": answers,
        "distractors": distractors,
        "circuits": out_circuits,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    for c in out_circuits:
        print(f"  {c['name']}: faithfulness {c['expected']['faithfulness']:.6f}")


def gpt2_tiny():
    rng = random.Random(5)
    seq, vocab = 7, 300
    prompt = lambda: [rng.randrange(1, vocab) for _ in range(seq)]
    clean = [prompt() for _ in range(6)]
    reference = [prompt() for _ in range(5)]
    answers = [rng.randrange(1, vocab) for _ in clean]
    distractors = [rng.randrange(1, vocab) for _ in clean]
    circuits = [
        {"name": "nodes", "heads": [[0, 1, [2, 6]], [1, 0, list(range(seq))], [2, 3, [6]], [2, 4, [5, 6]]], "qk_edges": []},
        {
            "name": "edges",
            "heads": [[0, 1, [2, 6]], [1, 0, list(range(seq))], [2, 3, [6]], [2, 4, [5, 6]]],
            "qk_edges": [[2, 3, 6, [1, 4, 6]], [1, 0, 3, [0, 3]], [2, 4, 6, [2]]],
        },
        {
            "name": "most",
            "heads": [[l, h, list(range(seq))] for l in range(3) for h in range(5) if (l, h) != (1, 2)],
            "qk_edges": [[2, 0, 6, [0, 1, 2, 3, 5]]],
        },
    ]
    make_fixture(
        "gpt2_tiny",
        ROOT / "tests" / "fixtures" / "models" / "gpt2-tiny",
        "tests/fixtures/models/gpt2-tiny",
        clean,
        reference,
        answers,
        distractors,
        circuits,
    )


def stories260k():
    model_dir = ROOT.parent / "shared" / "models" / "stories260K"
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    records = [json.loads(line) for line in (ROOT / "tests/fixtures/eval/friends.jsonl").read_text().splitlines()]

    def fill(template, fillers):
        for k, v in fillers.items():
            template = template.replace("{" + k + "}", v)
        return template

    encode = lambda text: tokenizer.encode(text).ids  # BOS added, as the model was trained
    single = lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    clean = [encode(fill(r["template"], r["fillers"])) for r in records]
    reference = [encode(fill(r.get("reference", {}).get("template", r["template"]), r["reference"]["fillers"])) for r in records]
    answers = [single(r["answer"])[0] for r in records]
    distractors = [single(r["distractor"])[0] for r in records]
    assert len({len(p) for p in clean + reference}) == 1, "equal lengths"
    seq = len(clean[0])
    end, s1, s3 = seq - 1, 14, 21  # label positions in these prompts (see `circuit dataset inspect`)
    circuits = [
        {
            "name": "nodes",
            "heads": [[0, h, list(range(seq))] for h in range(8)] + [[3, 1, [s3, end]], [4, 2, [end]], [2, 6, [s1, s3]]],
            "qk_edges": [],
        },
        {
            "name": "edges",
            "heads": [[0, h, list(range(seq))] for h in range(8)] + [[3, 1, [s3, end]], [4, 2, [end]], [2, 6, [s1, s3]]],
            "qk_edges": [[3, 1, end, [s1, s3, end]], [4, 2, end, [0, s1]], [2, 6, s3, [s1, s3 - 1]]],
        },
    ]
    make_fixture("stories260k", model_dir, "../shared/models/stories260K", clean, reference, answers, distractors, circuits)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    gpt2_tiny()
    stories260k()
