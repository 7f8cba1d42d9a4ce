#!/usr/bin/env python3
"""Writes the backward pass's autograd fixtures under tests/fixtures/gradients/ (float64 torch).

For each model folder (reloaded from disk with transformers, never converted in memory) and a
few prompts, the gradient of M = mean over prompts of logit_diff (answer logit − distractor
logit at the prompt's last token) with respect to:

  z          every head's output before W_O, per position            (L, T, H, d)
  pattern    every head's attention pattern                          (L, H, T, T)
  q_input    the residual stream (pre-norm) as head h's query reads it (L, T, H, D)
  k_input    ... as head h's key reads it (under grouped-query attention, the key as query
             head h reads it: the heads of a group are given separate copies)
  v_input    ... as head h's value reads it
  mlp_in     the residual stream (pre-norm) as the MLP reads it       (L, T, D)
  mlp_out    the MLP's output                                        (L, T, D)
  resid_pre  the residual stream entering each layer                 (L, T, D)
  resid_final the residual stream before the final norm              (T, D)

torch autograd computes every gradient. The forward is written out here (from the model's own
weights, with torch's layer_norm / gelu(tanh) / silu / softmax and transformers' rotary
embedding) so that each head's q, k and v can read its own copy of the residual stream, which
transformers' modules cannot express; it is checked against transformers' own logits first.

    /tmp/venv/bin/python scripts/grad_reference.py      # rewrites tests/fixtures/gradients/
    /tmp/venv/bin/python scripts/grad_reference.py neox-parallel-f16   # only the models named

GPT-NeoX: q, k and v are the per-head parts of the fused `query_key_value` (rows h·3d + j·d),
partial rotary is transformers' own NeoX `apply_rotary_pos_emb`, and under
`use_parallel_residual` the MLP reads `resid_pre` (so `mlp_in` is a copy of it, read by the MLP
only) and `resid_post = resid_pre + attn_out + mlp_out`.

Qwen3: Llama's forward with each head's q and k passed through an RMSNorm over head_dim
(`q_norm`, `k_norm`: one gain shared by the heads) after the projection and before rotary; its
fixture's sliding window binds on layers 1 and 2 (the long prompts).

Gemma 2: every RMSNorm multiplies by (1 + w); the embedding is scaled by √D; scores are scaled by
query_pre_attn_scalar^-0.5 and soft-capped (c·tanh(s/c)) before the causal mask; the attention's
and the MLP's outputs pass through their post-norms before they are added (so `mlp_out` is the
MLP's output after `post_feedforward_layernorm`, what is added to the stream); the MLP is GeGLU
(gelu tanh); the logits are soft-capped.

Output per model: {name}.safetensors (float32 arrays; for prompt p: `p{p}.ids` (T,) i64,
`p{p}.targets` (2,) i64 answer and distractor, `p{p}.metric` (1,) f64, `p{p}.{quantity}`) and
{name}.json (prompts, versions, the agreement with transformers' logits).
"""

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as neox_rotary
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gradients"
MODELS = {
    "gpt2-tiny": ROOT / "tests" / "fixtures" / "models" / "gpt2-tiny",
    "llama-gqa-bf16": ROOT / "tests" / "fixtures" / "models" / "llama-gqa-bf16",
    "neox-parallel-f16": ROOT / "tests" / "fixtures" / "models" / "neox-parallel-f16",
    "neox-sequential-bf16": ROOT / "tests" / "fixtures" / "models" / "neox-sequential-bf16",
    "qwen2-tied-f32": ROOT / "tests" / "fixtures" / "models" / "qwen2-tied-f32",
    "mistral-head-dim-bf16": ROOT / "tests" / "fixtures" / "models" / "mistral-head-dim-bf16",
    "gemma2-bf16": ROOT / "tests" / "fixtures" / "models" / "gemma2-bf16",
    "stories260K": ROOT.parent / "shared" / "models" / "stories260K",
    "mistral-window-f32": ROOT / "tests" / "fixtures" / "models" / "mistral-window-f32",
    "qwen2-window-f16": ROOT / "tests" / "fixtures" / "models" / "qwen2-window-f16",
    "qwen3-bf16": ROOT / "tests" / "fixtures" / "models" / "qwen3-bf16",
}
PROMPTS = ["The cat sat", "Once upon a time", "A red ball"]
# Models with sliding windows (3 or 4 keys) get prompts long enough for the windows to bind.
WINDOW_PROMPTS = ["The cat sat on the mat.", "Once upon a time there was a girl", "A red ball"]
WINDOWED = {"mistral-window-f32", "qwen2-window-f16", "qwen3-bf16"}

torch.set_default_dtype(torch.float64)


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class Reference:
    """One prompt's forward with every gradient site a tensor autograd keeps the grad of."""

    def __init__(self, hf):
        self.hf = hf
        self.cfg = hf.config
        self.sd = {k: v.to(torch.float64) for k, v in hf.state_dict().items()}
        self.gpt2 = self.cfg.model_type == "gpt2"
        self.neox = self.cfg.model_type == "gpt_neox"
        self.parallel = self.neox and self.cfg.use_parallel_residual
        self.gemma2 = self.cfg.model_type == "gemma2"
        self.qwen3 = self.cfg.model_type == "qwen3"

    def rms(self, name):
        """RMSNorm by its weight's name: Gemma 2 multiplies by (1 + w)."""
        w = self.sd[name + ".weight"]
        gain = 1.0 + w if self.gemma2 else w
        return lambda x: rms_norm(x, gain, self.cfg.rms_norm_eps)

    def post_norms(self, i):
        """Gemma 2's norms on the attention's and the MLP's outputs (identity elsewhere)."""
        if not self.gemma2:
            return (lambda x: x), (lambda x: x)
        p = f"model.layers.{i}."
        return self.rms(p + "post_attention_layernorm"), self.rms(p + "post_feedforward_layernorm")

    def window(self, i):
        """Layer i's sliding window as transformers applies it (None: every earlier key).
        Mistral: `sliding_window` on every layer; Qwen2: on the layers `layer_types` marks."""
        w = getattr(self.cfg, "sliding_window", None)
        if w is None or self.cfg.model_type == "mistral":
            return w
        types = getattr(self.cfg, "layer_types", None)
        return w if types is not None and types[i] == "sliding_attention" else None

    def weights(self, i):
        """(norm1, (Wq, bq), (Wk, bk), (Wv, bv), (Wo, bo), norm2, mlp) with W as (in, out)."""
        sd = self.sd
        if self.gpt2:
            p = f"transformer.h.{i}."
            d = self.cfg.n_embd
            w, b = sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]  # (D, 3D) Conv1D
            eps = self.cfg.layer_norm_epsilon
            ln = lambda name: (lambda x: F.layer_norm(x, (d,), sd[p + name + ".weight"], sd[p + name + ".bias"], eps))
            fc = (sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
            proj = (sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
            mlp = lambda x: (F.gelu(x @ fc[0] + fc[1], approximate="tanh")) @ proj[0] + proj[1]
            return (
                ln("ln_1"),
                (w[:, :d], b[:d]),
                (w[:, d : 2 * d], b[d : 2 * d]),
                (w[:, 2 * d :], b[2 * d :]),
                (sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"]),
                ln("ln_2"),
                mlp,
            )
        if self.neox:
            p = f"gpt_neox.layers.{i}."
            D, H = self.cfg.hidden_size, self.cfg.num_attention_heads
            d = D // H
            eps = self.cfg.layer_norm_eps
            ln = lambda name: (lambda x: F.layer_norm(x, (D,), sd[p + name + ".weight"], sd[p + name + ".bias"], eps))
            w, b = sd[p + "attention.query_key_value.weight"], sd.get(p + "attention.query_key_value.bias")
            def part(j):  # rows of head h's j-th third, as transformers views the output (…, H, 3d)
                rows = torch.cat([torch.arange((3 * h + j) * d, (3 * h + j + 1) * d) for h in range(H)])
                return (w[rows].T, None if b is None else b[rows])
            fc = (sd[p + "mlp.dense_h_to_4h.weight"].T, sd[p + "mlp.dense_h_to_4h.bias"])
            proj = (sd[p + "mlp.dense_4h_to_h.weight"].T, sd[p + "mlp.dense_4h_to_h.bias"])
            mlp = lambda x: F.gelu(x @ fc[0] + fc[1]) @ proj[0] + proj[1]
            return (
                ln("input_layernorm"),
                part(0),
                part(1),
                part(2),
                (sd[p + "attention.dense.weight"].T, sd.get(p + "attention.dense.bias")),
                ln("post_attention_layernorm"),
                mlp,
            )
        p = f"model.layers.{i}."
        eps = self.cfg.rms_norm_eps
        lin = lambda name: (sd[p + name + ".weight"].T, sd.get(p + name + ".bias"))
        norm = lambda name: self.rms(p + name)
        gate, up, down = lin("mlp.gate_proj"), lin("mlp.up_proj"), lin("mlp.down_proj")
        if self.gemma2:
            mlp = lambda x: (F.gelu(x @ gate[0], approximate="tanh") * (x @ up[0])) @ down[0]
        else:
            mlp = lambda x: (F.silu(x @ gate[0]) * (x @ up[0])) @ down[0]
        return (
            norm("input_layernorm"),
            lin("self_attn.q_proj"),
            lin("self_attn.k_proj"),
            lin("self_attn.v_proj"),
            lin("self_attn.o_proj"),
            # Gemma 2's MLP reads pre_feedforward_layernorm; its post_attention_layernorm is
            # a post-norm (`post_norms`).
            norm("pre_feedforward_layernorm" if self.gemma2 else "post_attention_layernorm"),
            mlp,
        )

    def forward(self, ids):
        cfg, sd = self.cfg, self.sd
        T = len(ids)
        ids_t = torch.tensor(ids)
        if self.gpt2:
            n_layers, H = cfg.n_layer, cfg.n_head
            D = cfg.n_embd
            d, H_kv = D // H, H
            embed = sd["transformer.wte.weight"][ids_t] + sd["transformer.wpe.weight"][:T]
            final_norm = lambda x: F.layer_norm(x, (D,), sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"], cfg.layer_norm_epsilon)
            unembed = sd["transformer.wte.weight"]
        elif self.neox:
            n_layers, H, D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size
            d, H_kv = D // H, H
            embed = sd["gpt_neox.embed_in.weight"][ids_t]
            final_norm = lambda x: F.layer_norm(x, (D,), sd["gpt_neox.final_layer_norm.weight"], sd["gpt_neox.final_layer_norm.bias"], cfg.layer_norm_eps)
            unembed = sd["lm_head.weight"]  # transformers 5's name of the file's embed_out
            cos, sin = self.hf.gpt_neox.rotary_emb(embed[None], torch.arange(T)[None])  # (1, T, r) each
        else:
            n_layers, H, D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size
            d = getattr(cfg, "head_dim", None) or D // H
            H_kv = cfg.num_key_value_heads
            embed = sd["model.embed_tokens.weight"][ids_t]
            if self.gemma2:
                embed = embed * math.sqrt(D)
            final_norm = self.rms("model.norm")
            unembed = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
            positions = torch.arange(T)[None]
            cos, sin = self.hf.model.rotary_emb(embed[None], positions)  # (1, T, d) each
        group = H // H_kv
        keep = {k: [] for k in ["resid_pre", "q_input", "k_input", "v_input", "z", "pattern", "mlp_in", "mlp_out"]}
        embed = embed.clone().requires_grad_(True)
        resid = embed
        mask = torch.ones(T, T, dtype=torch.bool).tril()

        def heads(W, b, source):  # per query head h, the columns of head source(h): (H, D, d), (H, d)
            Wh = torch.stack([W[:, source(h) * d : (source(h) + 1) * d] for h in range(H)])
            bh = None if b is None else torch.stack([b[source(h) * d : (source(h) + 1) * d] for h in range(H)])
            return Wh, bh

        for i in range(n_layers):
            norm1, q_w, k_w, v_w, o_w, norm2, mlp = self.weights(i)
            post_attn, post_mlp = self.post_norms(i)
            resid.retain_grad()
            keep["resid_pre"].append(resid)
            proj = {}
            for which, (W, b), source in [("q", q_w, lambda h: h), ("k", k_w, lambda h: h // group), ("v", v_w, lambda h: h // group)]:
                r = resid[:, None, :].repeat(1, H, 1)  # (T, H, D): this head's own copy
                r.retain_grad()
                keep[which + "_input"].append(r)
                Wh, bh = heads(W, b, source)
                y = torch.einsum("thD,hDd->thd", norm1(r), Wh)  # (T, H, d)
                proj[which] = y if bh is None else y + bh
            q, k, v = proj["q"], proj["k"], proj["v"]
            if self.qwen3:  # each head's q and k normed over head_dim with one gain, before rotary
                p = f"model.layers.{i}.self_attn."
                q, k = self.rms(p + "q_norm")(q), self.rms(p + "k_norm")(k)
            if not self.gpt2:
                rotary = neox_rotary if self.neox else apply_rotary_pos_emb
                q4, k4 = rotary(q.permute(1, 0, 2)[None], k.permute(1, 0, 2)[None], cos, sin)
                q, k = q4[0].permute(1, 0, 2), k4[0].permute(1, 0, 2)
            if self.gemma2:
                scores = torch.einsum("qhd,khd->hqk", q, k) * cfg.query_pre_attn_scalar**-0.5
                if cfg.attn_logit_softcapping is not None:
                    cap = cfg.attn_logit_softcapping
                    scores = torch.tanh(scores / cap) * cap
            else:
                scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)  # (H, T, T)
            window = self.window(i)
            if window is None:
                layer_mask = mask
            else:  # key k visible from query q iff q - window < k <= q
                offsets = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # (T, T) q - k
                layer_mask = mask & (offsets < window)
            scores = scores.masked_fill(~layer_mask, float("-inf"))
            pattern = F.softmax(scores, dim=-1)
            pattern.retain_grad()
            keep["pattern"].append(pattern)
            z = torch.einsum("hqk,khd->qhd", pattern, v)  # (T, H, d)
            z.retain_grad()
            keep["z"].append(z)
            attn_out = z.reshape(T, H * d) @ o_w[0]
            if o_w[1] is not None:
                attn_out = attn_out + o_w[1]
            attn_out = post_attn(attn_out)
            resid_mid = resid + attn_out
            # Read by the MLP only (its grad is the MLP path's): resid_mid, or in parallel resid_pre.
            mlp_in = (resid if self.parallel else resid_mid) * 1.0
            mlp_in.retain_grad()
            keep["mlp_in"].append(mlp_in)
            mlp_out = post_mlp(mlp(norm2(mlp_in)))
            mlp_out.retain_grad()
            keep["mlp_out"].append(mlp_out)
            resid = resid_mid + mlp_out
        resid.retain_grad()
        logits = final_norm(resid) @ unembed.T  # (T, V)
        if self.gemma2 and cfg.final_logit_softcapping is not None:
            cap = cfg.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits, resid, keep


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    chosen = sys.argv[1:] or list(MODELS)
    for name, folder in MODELS.items():
        if name not in chosen:
            continue
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager")
        hf.eval()
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        vocab = tokenizer.get_vocab_size()
        ref = Reference(hf)
        tensors, worst_logit_diff = {}, 0.0
        prompts = WINDOW_PROMPTS if name in WINDOWED else PROMPTS
        for p, text in enumerate(prompts):
            ids = tokenizer.encode(text).ids
            # Past the first 3/5 of the vocabulary: stories260K's low ids are byte-fallback tokens
            # whose unembeddings barely differ (a logit difference with almost no gradient).
            first = 3 * vocab // 5
            answer, distractor = (first + 37 * p) % vocab, (first + 53 * p + 17) % vocab
            logits, resid_final, keep = ref.forward(ids)
            with torch.no_grad():
                hf_logits = hf(torch.tensor([ids])).logits[0]
            worst_logit_diff = max(worst_logit_diff, ((logits - hf_logits).abs().max() / hf_logits.abs().max()).item())
            metric = logits[-1, answer] - logits[-1, distractor]
            (metric / len(prompts)).backward()
            tensors[f"p{p}.ids"] = torch.tensor(ids, dtype=torch.int64)
            tensors[f"p{p}.targets"] = torch.tensor([answer, distractor], dtype=torch.int64)
            tensors[f"p{p}.metric"] = metric.detach().reshape(1)
            tensors[f"p{p}.resid_final"] = resid_final.grad.float()
            for quantity, per_layer in keep.items():
                tensors[f"p{p}.{quantity}"] = torch.stack([t.grad for t in per_layer]).float()
        assert worst_logit_diff < 1e-5, f"{name}: the reference forward is {worst_logit_diff:e} off transformers"
        save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"{name}.safetensors")
        meta = {
            "generator": "scripts/grad_reference.py",
            "model": str(folder.relative_to(ROOT.parent)),
            "metric": "logit_diff, averaged over prompts",
            "prompts": prompts,
            "max_relative_logit_difference_vs_transformers": worst_logit_diff,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        (OUT / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{name}: reference forward within {worst_logit_diff:.1e} of transformers")


if __name__ == "__main__":
    main()
