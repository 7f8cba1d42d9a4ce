"""The TransformerLens hook loop a researcher would write for an exact scan, timed on the same
task as `cargo bench --bench scan`: every head at every position of a GPT-2-small-shaped model
with random weights, mean-ablated alone (one `run_with_hooks` per ablation), logit difference at
END over 32 prompts x 16 tokens.

Only a sample of the 2304 ablations is timed (every 2304/SAMPLE-th, so every layer is in it) and
the total is extrapolated; the output says so.

    cargo bench --bench scan -- --weights /tmp/scan_gpt2     # writes the model and the task
    HF_HUB_OFFLINE=1 /tmp/venv/bin/python scripts/bench_scan_tl.py /tmp/scan_gpt2 --threads 1
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast
from transformer_lens.model_bridge import TransformerBridge

SAMPLE = 48


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", help="the folder `cargo bench --bench scan -- --weights DIR` wrote")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sample", type=int, default=SAMPLE)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.dir)
    task = json.loads((folder / "scan_task.json").read_text())
    ids = torch.tensor(task["ids"])  # (B, T)
    answer, distractor = task["answer"], task["distractor"]

    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    model = TransformerBridge.boot_transformers("gpt2", hf_model=hf, tokenizer=tokenizer)
    n_layers, n_heads = hf.config.n_layer, hf.config.n_head
    seq = ids.shape[1]

    def logit_diff(logits):
        end = logits[:, -1, :]
        return (end[:, answer] - end[:, distractor]).mean().item()

    with torch.no_grad():
        full_logits, cache = model.run_with_cache(ids)
        full = logit_diff(full_logits)
        # Mean over the reference prompts (the clean prompts, as the bench's file says) at each
        # position: (T, H, d) per layer.
        means = []
        for layer in range(n_layers):
            z = cache[f"blocks.{layer}.attn.hook_z"]
            if z.dim() == 3:  # (B, T, H*d)
                z = z.reshape(z.shape[0], z.shape[1], n_heads, -1)
            means.append(z.mean(dim=0))
        del cache

        ablations = [
            (layer, head, pos)
            for layer in range(n_layers)
            for head in range(n_heads)
            for pos in range(seq)
        ]
        step = max(len(ablations) // args.sample, 1)
        sample = ablations[::step]
        effects = []
        started = time.perf_counter()
        for layer, head, pos in sample:

            def hook(z, hook, layer=layer, head=head, pos=pos):
                shaped = z.reshape(z.shape[0], z.shape[1], n_heads, -1) if z.dim() == 3 else z
                shaped[:, pos, head, :] = means[layer][pos, head, :]
                return shaped.reshape(z.shape)

            logits = model.run_with_hooks(
                ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)]
            )
            effects.append(logit_diff(logits) - full)
        each = (time.perf_counter() - started) / len(sample)
    print(
        f"TransformerLens hook loop, {n_layers} layers x {n_heads} heads, {ids.shape[0]} prompts x {seq} tokens, "
        f"{args.threads} thread(s)"
    )
    print(
        f"  one run_with_hooks per ablation: {each:.3f} s each (measured on {len(sample)} ablations), "
        f"{each * len(ablations):.1f} s for all {len(ablations)} (extrapolated)"
    )
    print(f"  first sampled effects (logit_diff units): {[round(e, 6) for e in effects[:4]]}")


if __name__ == "__main__":
    main()
