"""What researchers run instead of `circuit scores --method eap`: TransformerLens's attribution
patching (`transformer_lens.tools.analysis.attribution_patching.attribution_patch`, in
TransformerLens 4.3), on the task `cargo bench --bench eap` writes, timed; and the model folder
that bench uses.

    # the random GPT-2-small folder (GPT2LMHeadModel(GPT2Config()), seed 0, + GPT-2's tokenizer)
    HF_HUB_OFFLINE=1 /tmp/venv/bin/python scripts/bench_eap.py make-model /tmp/circuit-bench-eap-gpt2
    # TransformerLens on the bench's prompts (after `cargo bench --bench eap` wrote eap_task.json)
    HF_HUB_OFFLINE=1 /tmp/venv/bin/python scripts/bench_eap.py tl /tmp/circuit-bench-eap-gpt2 --threads 1
    # the same scores? (after `cargo bench --bench eap -- --small`, which writes ours)
    HF_HUB_OFFLINE=1 /tmp/venv/bin/python scripts/bench_eap.py compare /tmp/circuit-bench-eap-small

The same computation: the bench's file ablates heads and MLPs by resample (prompt p's ablated
value is its paired reference prompt r_p's), metric logit_diff, so our score of a component is
mean_p (o(r_p) - o(p)) . dM_p/do at the clean run p. `attribution_patch(model, clean, corrupt,
metric)` scores (a(clean) - a(corrupt)) . dM/da at the *corrupt* run, averaged over the pairs; so
it is called with clean = our reference prompts and corrupt = our clean prompts. Its nodes are
each head's z and each MLP's output per position (plus the embedding, which we do not score);
its edges are writer -> reader per position (head outputs through hook_result, MLP outputs; into
each head's q/k/v input, each MLP's input, the logits): our path edges. It has no QK edges.

TransformerLens runs one prompt pair at a time (a clean forward, a corrupt forward and its
backward, batch 1); `--prompts K` times the first K pairs and extrapolates to all (said so).
"""

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "tests/fixtures/gpt2-tokenizer/tokenizer.json"


def make_model(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=64) if args.small else GPT2Config()
    model = GPT2LMHeadModel(config).eval()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    shutil.copy(TOKENIZER, folder / "tokenizer.json")
    print(f"wrote {folder}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")


def load_bridge(folder):
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformer_lens.model_bridge import TransformerBridge

    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    model = TransformerBridge.boot_transformers("gpt2", hf_model=hf, tokenizer=tokenizer)
    model.eval()
    return model


def attribution(folder, granularity, prompts):
    """TransformerLens's scores on the first `prompts` pairs and the seconds they took."""
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    task = json.loads((folder / "eap_task.json").read_text())
    clean = torch.tensor(task["clean"])[:prompts]  # (B, T): our evaluated prompts
    reference = torch.tensor(task["reference"])[:prompts]  # (B, T): their paired references
    answer, distractor = task["answer"], task["distractor"]
    model = load_bridge(folder)

    def logit_diff(logits):  # one prompt's logits (1, T, V)
        return logits[0, -1, answer] - logits[0, -1, distractor]

    config = EdgeAttributionConfig(granularity=granularity)
    # Warm-up on one pair (first-call costs of torch and the hooks).
    attribution_patch(model, reference[:1], clean[:1], logit_diff, config)
    started = time.perf_counter()
    result = attribution_patch(model, reference, clean, logit_diff, config)
    return result, time.perf_counter() - started, model


def tl(args):
    torch.set_num_threads(args.threads)
    folder = Path(args.dir)
    n_all = len(json.loads((folder / "eap_task.json").read_text())["clean"])
    for granularity in args.granularity:
        prompts = min(args.prompts or n_all, n_all)
        result, seconds, model = attribution(folder, granularity, prompts)
        cfg = model.cfg
        total = seconds * n_all / prompts
        scored = len(result.edge_scores) if granularity == "edge" else len(result.node_scores)
        how = "measured" if prompts == n_all else f"extrapolated from {prompts} pairs"
        print(
            f"TransformerLens attribution_patch {granularity:<4} {cfg.n_layers} layers x "
            f"{cfg.n_heads} heads, {n_all} prompts x {len(json.loads((folder / 'eap_task.json').read_text())['clean'][0])} tokens, "
            f"{args.threads} thread(s): {total:8.2f} s for all {n_all} pairs ({how}: "
            f"{seconds / prompts:.3f} s per pair); {scored} scores"
        )


def ours(folder, name):
    return json.loads((folder / f"eap_ours_{name}.json").read_text())


HEAD = re.compile(r"^(\d+)\.(\d+)$")


def writer_node(text, position, Node):
    if text.startswith("mlp "):
        return Node(kind="mlp_out", layer=int(text[4:]), position=position)
    layer, head = HEAD.match(text).groups()
    return Node(kind="attn_head_out", layer=int(layer), head=int(head), position=position)


def reader_node(text, position, n_layers, Node):
    if text == "logits":
        return Node(kind="logits", layer=n_layers - 1, position=position)
    if text.startswith("mlp "):
        return Node(kind="mlp_in", layer=int(text[4:]), position=position)
    layer, head, which = text.split(".")
    return Node(kind=f"{which}_input", layer=int(layer), head=int(head), position=position)


def report(what, pairs):
    worst = max(abs(a - b) for a, b in pairs)
    scale = max(abs(b) for _, b in pairs)
    print(
        f"{what}: {len(pairs)} scores, max |ours - TransformerLens| = {worst:.3e}, "
        f"max |score| = {scale:.3e}, relative {worst / scale:.2e}"
    )
    return worst / scale


def compare(args):
    from transformer_lens.tools.analysis.attribution_patching import Node

    torch.set_num_threads(args.threads)
    folder = Path(args.dir)
    worst = 0.0

    result, _, model = attribution(folder, "node", 10**9)
    n_layers = model.cfg.n_layers
    pairs = []
    for entry in ours(folder, "eap_nodes"):
        c = entry["component"]
        if "head" in c:
            node = Node(kind="attn_head_out", layer=c["head"][0], head=c["head"][1], position=entry["query"])
        else:
            node = Node(kind="mlp_out", layer=c["mlp"], position=entry["query"])
        pairs.append((entry["score"], result.node_scores[node]))
    worst = max(worst, report("node scores (heads and MLPs per position)", pairs))

    result, _, _ = attribution(folder, "edge", 10**9)
    pairs = []
    for entry in ours(folder, "eap_path-edges"):
        source, target = entry["component"]["path"].split(" -> ")
        p = entry["query"]
        edge = (writer_node(source, p, Node), reader_node(target, p, n_layers, Node))
        pairs.append((entry["score"], result.edge_scores[edge]))
    worst = max(worst, report("path-edge scores (every writer -> reader per position)", pairs))
    if worst > args.tolerance:
        raise SystemExit(f"disagreement {worst:.2e} above {args.tolerance:.0e}")
    print(f"agree within {args.tolerance:.0e} (relative to the largest score)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-model")
    p.add_argument("dir")
    p.add_argument("--small", action="store_true", help="2 layers, 4 heads, d_model 64")
    p.set_defaults(run=make_model)
    p = sub.add_parser("tl")
    p.add_argument("dir")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompts", type=int, default=None, help="time the first K pairs only")
    p.add_argument("--granularity", nargs="+", default=["node", "edge"], choices=["node", "edge"])
    p.set_defaults(run=tl)
    p = sub.add_parser("compare")
    p.add_argument("dir")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.set_defaults(run=compare)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
