"""Edge-complete circuits evaluated by auto-circuit itself, for tests/edge_complete_autocircuit.rs.

auto-circuit (PyPI `auto-circuit` 1.0.1, on TransformerLens 2: it needs `HookedTransformer`)
patches a factorized transformer: every destination input (each head's q, k and v input, each
MLP's input, `Resid End`) reads its clean value plus, for every incoming edge whose mask is 1,
(ablation - current) of that edge's source ("Resid Start" = the embedding, each head's
`hook_result`, each `hook_mlp_out`). With token-wise mean ablation over the corrupt prompts, that
is the definition of an edge-complete `.circuit` (docs/semantics.md, section 8) under
`ablate heads and mlps by mean`, `reference D.corrupt`, `align by position`.

The model is the committed random GPT-2 fixture tests/fixtures/models/gpt2-tiny (3 layers,
5 heads), loaded into a `HookedTransformer` in float64 with TransformerLens' own GPT-2 weight
conversion and *no* weight processing (no LayerNorm folding, no centring, no value-bias folding,
which would move `b_V` out of the heads' outputs). Prompts are random token ids (seeded), all of
one length; the metric is the logit difference at the last token.

Run (a venv with auto-circuit and transformer-lens<3; see the module docs of the Rust test):
    HF_HUB_OFFLINE=1 /tmp/venv-ac/bin/python scripts/autocircuit_reference.py
writes tests/fixtures/autocircuit/gpt2_tiny.json, and the `random_half` circuit as an EAP-IG / MIB
graph JSON (auto-circuit's node names written as EAP-IG writes them: `Resid Start` is `input`,
`A1.2` is `a1.h2`, `A1.2.Q` is `a1.h2<q>`, `MLP 0` is `m0`, `Resid End` is `logits`) in
tests/fixtures/autocircuit/gpt2_tiny_random_half_graph.json, for `circuit import`.
"""

import json
import random
from pathlib import Path

import torch
import transformer_lens
import auto_circuit
from importlib.metadata import version
from transformers import GPT2LMHeadModel
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
from auto_circuit.data import PromptDataLoader, PromptDataset
from auto_circuit.types import AblationType
from auto_circuit.utils.ablation_activations import src_ablations
from auto_circuit.utils.graph_utils import patch_mode, patchable_model

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tests/fixtures/models/gpt2-tiny"
OUT = ROOT / "tests/fixtures/autocircuit/gpt2_tiny.json"
GRAPH_OUT = ROOT / "tests/fixtures/autocircuit/gpt2_tiny_random_half_graph.json"


def eap_ig_node(name):
    """An auto-circuit node name as the EAP-IG graph format writes it."""
    if name == "Resid Start":
        return "input"
    if name == "Resid End":
        return "logits"
    if name.startswith("MLP "):
        return "m" + name[len("MLP "):]
    assert name.startswith("A"), name
    parts = name[1:].split(".")
    head = f"a{parts[0]}.h{parts[1]}"
    return head if len(parts) == 2 else f"{head}<{parts[2].lower()}>"


def eap_ig_graph(config, edges, kept):
    """The graph JSON of the circuit keeping `kept` among `edges`."""
    nodes = {"input": {"score": None, "in_graph": True}}
    for layer in range(config.n_layer):
        for head in range(config.n_head):
            nodes[f"a{layer}.h{head}"] = {"score": None, "in_graph": True}
        nodes[f"m{layer}"] = {"score": None, "in_graph": True}
    nodes["logits"] = {"score": None, "in_graph": True}
    graph_edges = {}
    for e in edges:
        src, dest = e.split("->")
        name = f"{eap_ig_node(src)}->{eap_ig_node(dest)}"
        graph_edges[name] = {"score": None, "in_graph": e in kept}
    return {
        "cfg": {
            "n_layers": config.n_layer,
            "n_heads": config.n_head,
            "parallel_attn_mlp": False,
            "d_model": config.n_embd,
        },
        "nodes": nodes,
        "edges": graph_edges,
    }
N_PROMPTS, LENGTH = 6, 7


def load_model():
    hf = GPT2LMHeadModel.from_pretrained(ROOT / MODEL, dtype=torch.float64).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        n_heads=c.n_head,
        d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        act_fn=c.activation_function,
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        positional_embedding_type="standard",
        dtype=torch.float64,
        default_prepend_bos=False,
    )
    model = HookedTransformer(cfg)
    state = convert_gpt2_weights(hf, cfg)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.eval()
    # auto-circuit's factorized graph needs each head's output and q/k/v/MLP inputs apart.
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    # Not vacuous: the TransformerLens model is the transformers model.
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.allclose(model(ids), hf(ids).logits, atol=1e-9)
    return model, c


def main():
    tl_model, config = load_model()
    rng = random.Random(18)
    vocab = config.vocab_size
    clean = [[rng.randrange(vocab) for _ in range(LENGTH)] for _ in range(N_PROMPTS)]
    corrupt = [[rng.randrange(vocab) for _ in range(LENGTH)] for _ in range(N_PROMPTS)]
    answers = [rng.randrange(vocab) for _ in range(N_PROMPTS)]
    wrong = [rng.randrange(vocab) for _ in range(N_PROMPTS)]
    dataset = PromptDataset(
        torch.tensor(clean),
        torch.tensor(corrupt),
        [torch.tensor([a]) for a in answers],
        [torch.tensor([w]) for w in wrong],
    )
    loader = PromptDataLoader(dataset, seq_len=None, diverge_idx=0, batch_size=N_PROMPTS)

    model = patchable_model(
        tl_model, factorized=True, slice_output="last_seq", separate_qkv=True
    )
    edges = sorted(e.name for e in model.edges)
    ablations = src_ablations(model, loader, AblationType.TOKENWISE_MEAN_CORRUPT)
    clean_ids = torch.tensor(clean)

    def logit_diffs(kept):
        unknown = set(kept) - set(edges)
        assert not unknown, unknown
        patched = [e for e in edges if e not in kept]
        with patch_mode(model, ablations, patched):
            logits = model(clean_ids)[:, -1, :]  # (B, V)
        rows = torch.arange(N_PROMPTS)
        return (logits[rows, answers] - logits[rows, wrong]).tolist()

    layers, heads = config.n_layer, config.n_head
    last = f"A{layers - 1}"
    circuits = {
        "every_edge": edges,
        "no_edge": [],
        # A few edges, among them from the embedding ("Resid Start").
        "few_edges_with_embedding": [
            "Resid Start->A0.1.V",
            "Resid Start->A1.0.Q",
            "Resid Start->MLP 0",
            "Resid Start->Resid End",
            "A0.1->A1.0.V",
            "A0.1->MLP 1",
            "MLP 0->A2.3.K",
            "A1.0->Resid End",
            "MLP 1->Resid End",
            f"{last}.3->Resid End",
        ],
        # Every edge but those into one head's query input and into one MLP: those inputs
        # read only reference values.
        "inputs_left_without_edges": [
            e for e in edges if not e.endswith("->A2.3.Q") and not e.endswith("->MLP 1")
        ],
        # Every edge but those out of the embedding.
        "no_embedding": [e for e in edges if not e.startswith("Resid Start->")],
        # Half the edges, chosen at random.
        "random_half": sorted(random.Random(7).sample(edges, len(edges) // 2)),
    }
    assert heads > 3
    full = logit_diffs(edges)
    out = {
        "generator": "scripts/autocircuit_reference.py",
        "auto_circuit": version("auto-circuit"),
        "transformer_lens": version("transformer-lens"),
        "torch": torch.__version__,
        "model": MODEL,
        "ablation": "tokenwise_mean_corrupt",
        "metric": "logit_diff",
        "clean": clean,
        "corrupt": corrupt,
        "answers": answers,
        "wrong_answers": wrong,
        "n_edges": len(edges),
        "circuits": [],
    }
    with torch.no_grad():
        unpatched = tl_model(clean_ids)[:, -1, :]
    rows = torch.arange(N_PROMPTS)
    out["full_per_prompt"] = (unpatched[rows, answers] - unpatched[rows, wrong]).tolist()
    assert max(abs(a - b) for a, b in zip(full, out["full_per_prompt"])) < 1e-9
    for name, kept in circuits.items():
        out["circuits"].append(
            {"name": name, "edges": sorted(kept), "per_prompt": logit_diffs(kept)}
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    graph = eap_ig_graph(config, edges, set(circuits["random_half"]))
    GRAPH_OUT.write_text(json.dumps(graph, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(edges)} edges")
    for c in out["circuits"]:
        mean = sum(c["per_prompt"]) / N_PROMPTS
        print(f"  {c['name']}: {len(c['edges'])} edges, mean logit diff {mean:.6f}")


if __name__ == "__main__":
    main()
