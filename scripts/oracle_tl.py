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
  z[q] = Σ_{k∈K} A[q,k]·v[k] + Σ_{k∉K} mean_ref(A[q,k]·v[k]);
- MLP node ablation (scope heads_and_mlps): where an MLP is not kept, its output is the mean
  over the reference prompts of its output at that position;
- path edges (docs/semantics.md section 5): a downstream input (a head's q, k or v, an MLP's
  input, the logits) named by a path edge reads a stream rebuilt from its parts, in float64: the
  embedding (GPT-2: wte + wpe) + the attention output biases of the layers before it +, per
  position t, for every upstream component in scope (heads of earlier layers, and for `mlp L`
  the heads of layer L too; MLPs of earlier layers under heads_and_mlps) its output in this
  forward pass if an edge keeps it at t, else its mean over the reference prompts at t + the
  outputs of MLPs outside the scope. A head's output is its own write z_h · W_O^h (no bias).
  That stream then goes through the layer's own norm and the head's rows of the q, k or v
  projection (RoPE after it for Llama's q and k; under GQA a k or v edge changes the key/value
  of that query head only), or through the pre-MLP norm into the MLP, or through the final norm
  into the unembedding. "Output in this forward pass" is semantics.md's reading (an upstream
  component that is itself ablated or reads rebuilt inputs contributes that value), not the
  output of a separate clean run. Every rebuild is checked against the stream transformers
  computes: with every component at its own value the parts must sum to the model's residual
  stream.

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
# "ids" are the token ids of the batch being run; "outputs" the per-component outputs of this
# forward pass (for path edges); "ref_outputs" their means over the reference prompts.
# Longer than any prompt here: "*" in a path edge keeps every position below it.
SEQ_MAX = 1024

STATE = {
    "mode": "off",
    "means": {},
    "circuit": None,
    "ids": None,
    "outputs": {},
    "ref_outputs": {},
    "paths_hooked": False,
    "scope": "heads",
}


def oracle_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager causal attention in float64 with the ablation applied to z. The mask passed in is
    ignored: every batch here holds prompts of one length (no padding), so the causal mask is all
    there is, and it is applied here."""
    layer = module.layer_idx
    batch, n_heads, seq, d_head = query.shape
    group = n_heads // key.shape[1]
    key = key.repeat_interleave(group, dim=1)  # (B, H, T, d): GQA heads expanded
    value = value.repeat_interleave(group, dim=1)  # (B, H, T, d)
    if STATE["paths_hooked"] and STATE["arch"].name == "llama":
        query, key, value = llama_path_qkv(module, query, key, value, group)
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
    if STATE["paths_hooked"]:
        w_o = STATE["arch"].w_o(module).double().view(n_heads, d_head, -1)  # (H, d, D)
        head_out = torch.einsum("bhtd,hde->bthe", z.to(query.dtype).double(), w_o)  # (B, T, H, D)
        STATE["outputs"][("heads", layer)] = head_out
        if STATE["mode"] == "record":
            STATE["ref_outputs"][("heads", layer)] = head_out.mean(dim=0)  # (T, H, D)
    return z.transpose(1, 2).to(query.dtype).contiguous(), pattern.to(query.dtype)


AttentionInterface.register("circuit_oracle", oracle_attention)


def upstream_before(downstream, n_layers):
    """(layers whose heads and attention biases are upstream, layers whose MLPs are upstream) of
    a downstream input: a head of layer L reads layers < L; the MLP of layer L reads the heads of
    layers ≤ L and the MLPs of layers < L; the logits read everything."""
    if downstream[0] == "head":
        return downstream[1], downstream[1]
    if downstream[0] == "mlp":
        return downstream[1] + 1, downstream[1]
    return n_layers, n_layers


def rebuilt_stream(model, downstream, kept):
    """The residual stream `downstream` reads, rebuilt from its parts in float64, (B, T, D).
    `kept(upstream)` is a (T,) bool tensor: where True the component's output in this forward
    pass is used, elsewhere its reference mean; `kept=None` uses every component's own output.
    MLPs outside the scope always pass through."""
    ids = torch.tensor(STATE["ids"])
    seq = ids.shape[1]
    arch = STATE["arch"]
    stream = arch.embed(ids)  # (B, T, D): belongs to no component
    head_layers, mlp_layers = upstream_before(downstream, len(arch.blocks))
    for layer in range(head_layers):
        stream = stream + arch.attn_bias(layer)  # belongs to no component
        own = STATE["outputs"][("heads", layer)]  # (B, T, H, D)
        ref = STATE["ref_outputs"].get(("heads", layer))  # (T, H, D)
        for head in range(own.shape[2]):
            if kept is None:
                stream = stream + own[:, :, head]
                continue
            mask = kept(("head", layer, head))[None, :, None]  # (1, T, 1)
            stream = stream + torch.where(mask, own[:, :, head], ref[None, :, head])
    for layer in range(mlp_layers):
        own = STATE["outputs"][("mlp", layer)]  # (B, T, D)
        if STATE["scope"] == "heads" or kept is None:
            stream = stream + own  # outside the ablation: always passes through
            continue
        mask = kept(("mlp", layer))[None, :, None]  # (1, T, 1)
        stream = stream + torch.where(mask, own, STATE["ref_outputs"][("mlp", layer)][None])
    return stream


def path_input(model, downstream, actual_stream):
    """The rebuilt stream for `downstream` if the circuit names it in a path edge, else None.
    Either way, first checks the decomposition: every component at its own value must give back
    the stream transformers computed (`actual_stream`, (B, T, D))."""
    seq = actual_stream.shape[1]
    recomposed = rebuilt_stream(model, downstream, None)
    gap = (recomposed - actual_stream.double()).abs().max().item()
    assert gap < 1e-4, f"the parts of the stream into {downstream} miss it by {gap}"
    if STATE["mode"] != "ablate" or downstream not in STATE["circuit"]["paths"]:
        return None
    kept_at = STATE["circuit"]["paths"][downstream]  # upstream -> set of kept positions
    kept = lambda upstream: torch.tensor([t in kept_at.get(upstream, set()) for t in range(seq)])
    return rebuilt_stream(model, downstream, kept)


def layer_norm64(norm, x):
    """A transformers LayerNorm's own parameters applied in float64."""
    return torch.nn.functional.layer_norm(
        x, norm.normalized_shape, norm.weight.double(), norm.bias.double(), norm.eps
    )


def rms_norm64(norm, x):
    """A transformers RMSNorm's own weight applied in float64: x / sqrt(mean(x²) + eps) · w."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.double()


class Gpt2:
    """Where GPT-2 keeps the parts a rebuilt stream is made of."""

    name = "gpt2"

    def __init__(self, model):
        self.model, self.blocks = model, model.transformer.h
        self.norm64 = layer_norm64

    def embed(self, ids):
        t = self.model.transformer
        return t.wte.weight.double()[ids] + t.wpe.weight.double()[torch.arange(ids.shape[1])][None]

    def attn_bias(self, layer):
        return self.blocks[layer].attn.c_proj.bias.double()

    def w_o(self, attn):
        return attn.c_proj.weight  # Conv1D: out = z_flat @ W + b, W (H·d, D)

    def norms(self, layer):
        return self.blocks[layer].ln_1, self.blocks[layer].ln_2

    def final_norm(self):
        return self.model.transformer.ln_f


class Llama:
    """Where Llama keeps them: no position embedding, no biases, RMSNorm, RoPE on q and k."""

    name = "llama"

    def __init__(self, model):
        self.model, self.blocks = model, model.model.layers
        self.norm64 = rms_norm64

    def embed(self, ids):
        return self.model.model.embed_tokens.weight.double()[ids]

    def attn_bias(self, layer):
        bias = self.blocks[layer].self_attn.o_proj.bias
        return 0.0 if bias is None else bias.double()

    def w_o(self, attn):
        return attn.o_proj.weight.T  # Linear: out = z_flat @ weight.T, weight (D, H·d)

    def norms(self, layer):
        return self.blocks[layer].input_layernorm, self.blocks[layer].post_attention_layernorm

    def final_norm(self):
        return self.model.model.norm


def rotate(x, cos, sin):
    """RoPE as Llama applies it: the two halves of each head vector rotated by (cos, sin)."""
    half = x.shape[-1] // 2
    rotated_half = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated_half * sin


def llama_path_qkv(attn, query, key, value, group):
    """Per query head h named by a path edge into its q, k or v: that input recomputed from the
    rebuilt stream (norm, the head's rows of the projection, RoPE for q and k). Under GQA a k or v
    edge changes the key/value only for that query head, not for the other heads of its group."""
    layer = attn.layer_idx
    n_heads, d_head = query.shape[1], query.shape[3]
    cos, sin = (x.double()[:, None] for x in STATE["rope"][layer])  # (B, 1, T, d)
    query, key, value = query.clone(), key.clone(), value.clone()  # (B, H, T, d)
    norm = STATE["arch"].norms(layer)[0]
    for head in range(n_heads):
        for which, proj, rows, target in (
            ("q", attn.q_proj, head, query),
            ("k", attn.k_proj, head // group, key),
            ("v", attn.v_proj, head // group, value),
        ):
            stream = path_input(STATE["model"], ("head", layer, head, which), STATE["resid_pre"][layer])
            if stream is None:
                continue
            w = proj.weight.double()[rows * d_head : (rows + 1) * d_head]  # (d, D)
            projected = rms_norm64(norm, stream) @ w.T  # (B, T, d)
            if proj.bias is not None:
                projected = projected + proj.bias.double()[rows * d_head : (rows + 1) * d_head]
            if which != "v":
                projected = rotate(projected, cos[:, 0], sin[:, 0])
            target[:, head] = projected.to(target.dtype)
    return query, key, value


def install_llama_path_hooks(model):
    """Forward hooks on a LlamaForCausalLM: record MLP outputs and each layer's stream and RoPE
    angles (used by `llama_path_qkv`), feed MLP inputs and the logits their rebuilt streams."""
    arch = STATE["arch"] = Llama(model)
    STATE.update(paths_hooked=True, model=model, resid_pre={}, rope={})

    def on_input_norm(layer):
        def hook(module, args):
            STATE["resid_pre"][layer] = args[0]  # (B, T, D)

        return hook

    def on_attn(layer):
        def hook(module, args, kwargs):
            STATE["rope"][layer] = kwargs["position_embeddings"]  # cos, sin: (B, T, d)

        return hook

    for layer, block in enumerate(arch.blocks):
        block.input_layernorm.register_forward_pre_hook(on_input_norm(layer))
        block.self_attn.register_forward_pre_hook(on_attn(layer), with_kwargs=True)
        register_mlp_hooks(model, layer, block.post_attention_layernorm, block.mlp)
    register_final_hook(model, arch.final_norm())


def install_gpt2_path_hooks(model):
    """Forward hooks on a GPT2LMHeadModel that record MLP outputs, ablate MLPs (heads_and_mlps)
    and feed path-edge downstream inputs their rebuilt streams."""
    STATE.update(paths_hooked=True, model=model, arch=Gpt2(model))
    blocks = model.transformer.h
    n_heads, d_model = model.config.n_head, model.config.n_embd
    d_head = d_model // n_heads
    resid_pre = {}

    def on_ln_1(layer):
        def hook(module, args):
            resid_pre[layer] = args[0]  # (B, T, D): what q, k and v of this layer read

        return hook

    def on_c_attn(layer):
        def hook(module, args, output):
            output = output.clone()  # (B, T, 3D): q | k | v, head h at columns h·d..(h+1)·d
            for head in range(n_heads):
                for which, part in (("q", 0), ("k", 1), ("v", 2)):
                    stream = path_input(model, ("head", layer, head, which), resid_pre[layer])
                    if stream is None:
                        continue
                    cols = slice(part * d_model + head * d_head, part * d_model + (head + 1) * d_head)
                    w, b = module.weight.double()[:, cols], module.bias.double()[cols]
                    projected = layer_norm64(blocks[layer].ln_1, stream) @ w + b  # (B, T, d)
                    output[:, :, cols] = projected.to(output.dtype)
            return output

        return hook

    for layer, block in enumerate(blocks):
        block.ln_1.register_forward_pre_hook(on_ln_1(layer))
        block.attn.c_attn.register_forward_hook(on_c_attn(layer))
        register_mlp_hooks(model, layer, block.ln_2, block.mlp)
    register_final_hook(model, model.transformer.ln_f)


def register_mlp_hooks(model, layer, pre_mlp_norm, mlp):
    """Hooks on a layer's pre-MLP norm (the MLP reads the rebuilt stream when a path edge names
    it) and on its MLP (outputs recorded; ablated under heads_and_mlps)."""

    def on_norm(module, args, output):
        stream = path_input(model, ("mlp", layer), args[0])
        return output if stream is None else STATE["arch"].norm64(module, stream).to(output.dtype)

    def on_mlp(module, args, output):
        if STATE["mode"] == "ablate" and STATE["scope"] == "heads_and_mlps":
            kept = STATE["circuit"]["mlps"].get(layer, set())
            ref = STATE["ref_outputs"][("mlp", layer)]  # (T, D)
            output = output.clone()  # (B, T, D)
            for t in range(output.shape[1]):
                if t not in kept:
                    output[:, t] = ref[t].to(output.dtype)
        STATE["outputs"][("mlp", layer)] = output.double()
        if STATE["mode"] == "record":
            STATE["ref_outputs"][("mlp", layer)] = output.double().mean(dim=0)  # (T, D)
        return output

    pre_mlp_norm.register_forward_hook(on_norm)
    mlp.register_forward_hook(on_mlp)


def register_final_hook(model, final_norm):
    """The unembedding reads the rebuilt stream (through the final norm) when a path edge names
    the logits."""

    def on_final_norm(module, args, output):
        stream = path_input(model, ("logits",), args[0])
        return output if stream is None else STATE["arch"].norm64(module, stream).to(output.dtype)

    final_norm.register_forward_hook(on_final_norm)


def end_logit_diff(model, prompts, answers, distractors):
    STATE["ids"] = prompts
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
    mlps = {}
    for layer, positions in circuit.get("mlps", []):
        mlps.setdefault(layer, set()).update(positions)
    # Path edges: {"from": [L, H] | ["mlp", L], "to": [L, H, "q"|"k"|"v"] | ["mlp", L] | ["logits"],
    # "positions": [t, ...] | "*"} -> downstream -> upstream -> kept positions.
    paths = {}
    for edge in circuit.get("path_edges", []):
        source, target = edge["from"], edge["to"]
        upstream = ("mlp", source[1]) if source[0] == "mlp" else ("head", source[0], source[1])
        downstream = tuple(target) if target[0] in ("mlp", "logits") else ("head", *target)
        positions = edge["positions"]
        positions = range(SEQ_MAX) if positions == "*" else positions
        paths.setdefault(downstream, {}).setdefault(upstream, set()).update(positions)
    return {"kept": kept, "edges": edges, "mlps": mlps, "paths": paths}


def make_fixture(name, model_dir, model_rel, clean, reference, answers, distractors, circuits, scope="heads"):
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation="circuit_oracle", dtype=torch.float32
    )
    model.eval()
    STATE.update(paths_hooked=False, scope=scope, outputs={}, ref_outputs={})
    {"gpt2": install_gpt2_path_hooks, "llama": install_llama_path_hooks}[model.config.model_type](model)
    with torch.no_grad():
        STATE["mode"] = "record"
        STATE["ids"] = reference
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
        expected = {
            "full": m_full,
            "circuit": m_circuit,
            "empty": m_empty,
            "faithfulness": (m_circuit - m_empty) / (m_full - m_empty),
            "per_prompt_circuit": values,
        }
        if circuit.get("path_edges"):
            # The same circuit with its path edges left out: the path edges must matter.
            STATE["circuit"] = compile_circuit(dict(circuit, path_edges=[]))
            expected["circuit_without_path_edges"] = mean(end_logit_diff(model, clean, answers, distractors))
        out_circuits.append(dict(circuit, expected=expected))
    STATE["mode"] = "off"
    fixture = {
        "generator": "scripts/oracle_tl.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": model_rel,
        "ablation": "mean",
        "edge_ablation": "edge_mean",
        "scope": scope,
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
        e = c["expected"]
        without = e.get("circuit_without_path_edges")
        note = "" if without is None else f" (logit_diff {e['circuit']:.6f}, without its path edges {without:.6f})"
        print(f"  {c['name']}: faithfulness {e['faithfulness']:.6f}{note}")


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
    # Path edges (scope heads: MLPs pass through). Positions: END = 6; "*" is every position.
    every = list(range(seq))
    path_heads = [[0, 0, every], [0, 1, [2, 6]], [0, 3, every], [1, 0, every], [1, 2, [3, 4, 5, 6]], [2, 3, [6]], [2, 4, [5, 6]]]
    edge = lambda source, target, positions="*": {"from": source, "to": target, "positions": positions}
    circuits += [
        {
            "name": "path_q",
            "heads": path_heads,
            "qk_edges": [],
            "path_edges": [
                edge([0, 0], [2, 3, "q"]),
                edge([1, 0], [2, 3, "q"], [6]),
                edge([1, 2], [2, 3, "q"], [4, 6]),
                edge([0, 3], [1, 0, "q"], [1, 3, 5]),
            ],
        },
        {
            "name": "path_kv",
            "heads": path_heads,
            "qk_edges": [],
            "path_edges": [
                edge([0, 0], [2, 4, "k"], [0, 1, 2, 3]),
                edge([1, 2], [2, 4, "k"], [0, 1, 2, 3]),
                edge([0, 3], [2, 4, "k"]),
                edge([0, 1], [1, 0, "v"]),
                edge([0, 3], [1, 0, "v"]),
                edge([0, 0], [1, 0, "v"], [0, 2, 4]),
            ],
        },
        {
            "name": "path_mlp",
            "heads": path_heads,
            "qk_edges": [],
            "path_edges": [
                edge([0, 0], ["mlp", 0]),  # heads of the MLP's own layer are upstream of it
                edge([0, 3], ["mlp", 0], [0, 1, 2, 6]),
                edge([1, 0], ["mlp", 1], [6]),
                edge([0, 3], ["mlp", 1]),
                edge([2, 3], ["mlp", 2], [5, 6]),
                edge([1, 2], ["mlp", 2], [5, 6]),
            ],
        },
        {
            "name": "path_logits",
            "heads": path_heads,
            "qk_edges": [],
            "path_edges": [
                edge([2, 3], ["logits"], [6]),
                edge([2, 4], ["logits"], [6]),
                edge([1, 0], ["logits"]),
                edge([0, 0], ["logits"], [6]),
            ],
        },
        {
            # QK edges, node ablation and path edges together; 1.0's v input is rebuilt and its
            # output (as computed in this forward) is kept into the logits and into 2.3's q.
            "name": "path_mixed",
            "heads": path_heads,
            "qk_edges": [[2, 3, 6, [1, 4, 6]], [1, 0, 3, [0, 3]]],
            "path_edges": [
                edge([0, 1], [1, 0, "v"]),
                edge([0, 3], [1, 0, "v"], [2, 3, 4]),
                edge([1, 0], [2, 3, "q"]),
                edge([0, 0], [2, 3, "q"], [6]),
                edge([1, 0], [2, 4, "v"], [4, 5]),
                edge([0, 3], ["mlp", 1], [6]),
                edge([1, 0], ["logits"], [6]),
                edge([2, 3], ["logits"], [6]),
                edge([2, 4], ["logits"], [6]),
            ],
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
    # Scope heads_and_mlps: MLP nodes are ablated too, and MLPs are upstream components of path
    # edges (an MLP of layer L reaches heads of later layers, later MLPs and the logits).
    mlp_circuits = [
        {"name": "mlp_nodes", "heads": path_heads, "mlps": [[0, every], [1, [6]], [2, [5, 6]]], "qk_edges": []},
        {
            "name": "mlp_paths",
            "heads": path_heads,
            "mlps": [[0, every], [1, [6]], [2, [5, 6]]],
            "qk_edges": [[2, 3, 6, [1, 4, 6]]],
            "path_edges": [
                edge(["mlp", 0], [2, 3, "q"], [6]),
                edge([1, 0], [2, 3, "q"]),
                edge(["mlp", 0], [1, 0, "k"], [0, 1, 2, 3]),
                edge(["mlp", 0], [2, 4, "v"]),
                edge(["mlp", 1], [2, 4, "v"]),  # mlp 1 is ablated but at 6: its value in this forward
                edge(["mlp", 0], ["mlp", 2]),
                edge([2, 4], ["mlp", 2], [5, 6]),
                edge(["mlp", 0], ["logits"], [6]),
                edge(["mlp", 2], ["logits"], [6]),
                edge([2, 3], ["logits"], [6]),
            ],
        },
        {
            "name": "mlp_into_logits",
            "heads": path_heads,
            "mlps": [[0, every], [1, every], [2, every]],
            "qk_edges": [],
            "path_edges": [
                edge(["mlp", 1], ["logits"]),
                edge(["mlp", 2], ["logits"], [6]),
                edge([2, 3], ["logits"], [6]),
                edge([1, 0], ["logits"], [6]),
            ],
        },
    ]
    make_fixture(
        "gpt2_tiny_mlps",
        ROOT / "tests" / "fixtures" / "models" / "gpt2-tiny",
        "tests/fixtures/models/gpt2-tiny",
        clean,
        reference,
        answers,
        distractors,
        mlp_circuits,
        scope="heads_and_mlps",
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
    # Path edges under grouped-query attention (8 query heads, 4 key/value heads: 3.0 and 3.1
    # share one): an edge into 3.1.k or 3.1.v rebuilds the key/value input of 3.1 only; 3.0, kept
    # at the same positions, must still read the ordinary stream.
    every = list(range(seq))
    path_heads = [[0, h, every] for h in range(8)] + [
        [1, 3, every],
        [2, 6, [s1, s3, end]],
        [3, 0, [s3, end]],
        [3, 1, [s3, end]],
        [4, 2, [end]],
    ]
    edge = lambda source, target, positions="*": {"from": source, "to": target, "positions": positions}
    circuits += [
        {
            "name": "path_qkv",
            "heads": path_heads,
            "qk_edges": [],
            "path_edges": [
                edge([0, 1], [3, 1, "k"]),
                edge([0, 4], [3, 1, "k"], [0, s1, s3]),
                edge([2, 6], [3, 1, "k"], [s1, s3]),
                edge([1, 3], [3, 1, "v"]),
                edge([0, 6], [3, 1, "v"], list(range(s1, end + 1))),
                edge([0, 2], [4, 2, "q"], [end]),
                edge([2, 6], [4, 2, "q"], [end]),
                edge([3, 1], [4, 2, "v"]),
                edge([1, 3], [4, 2, "v"], [s1, s3]),
            ],
        },
        {
            "name": "path_mlp_logits",
            "heads": path_heads,
            "qk_edges": [[3, 1, end, [s1, s3, end]]],
            "path_edges": [
                edge([1, 3], ["mlp", 2]),
                edge([2, 6], ["mlp", 2], [s1, s3]),
                edge([0, 5], ["mlp", 2], [s1]),
                edge([3, 0], ["mlp", 3], [end]),
                edge([3, 1], ["mlp", 3], [s3, end]),
                edge([4, 2], ["logits"], [end]),
                edge([3, 1], ["logits"], [end]),
                edge([0, 7], ["logits"]),
            ],
        },
    ]
    make_fixture("stories260k", model_dir, "../shared/models/stories260K", clean, reference, answers, distractors, circuits)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    gpt2_tiny()
    stories260k()
