#!/usr/bin/env python3
"""HF transformers' eager GPT-2 forward on the shapes of benches/forward.rs, for comparison.

GPT-2-small shape (12 layers, 12 heads, d_model 768, vocab 50257) with random weights,
32 prompts x 16 random token ids, END logits (logits_to_keep=1) and all-position logits,
1 and 2 threads, median of 7 runs after a warm-up.

    /tmp/venv/bin/python scripts/bench_hf.py
"""

import resource
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

LAYERS, D, VOCAB, BATCH, SEQ, REPS = 12, 768, 50257, 32, 16, 7


def flops(rows: int) -> float:
    tokens = BATCH * SEQ
    return tokens * LAYERS * (24 * D * D + 4 * SEQ * D) + rows * 2 * D * VOCAB


def main():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=LAYERS, n_head=12, n_embd=D, vocab_size=VOCAB, n_positions=1024,
                        attn_implementation="eager")
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(7))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for label, keep in (("END logits", 1), ("all-position logits", 0)):
            with torch.inference_mode():
                model(ids, logits_to_keep=keep, use_cache=False)  # warm-up
                times, cpu_times = [], []
                for _ in range(REPS):
                    t, cpu = time.perf_counter(), time.process_time()
                    out = model(ids, logits_to_keep=keep, use_cache=False)
                    times.append(time.perf_counter() - t)
                    cpu_times.append(time.process_time() - cpu)
            assert out.logits.shape[1] == (1 if keep == 1 else SEQ)
            median = statistics.median(times)
            rows = BATCH if keep == 1 else BATCH * SEQ
            print(f"HF threads {threads}: {label:<20} median {median:.3f} s "
                  f"(min {min(times):.3f}, max {max(times):.3f}) over {REPS} runs, "
                  f"{flops(rows) / median / 1e9:.1f} GFLOP/s; "
                  f"CPU time median {statistics.median(cpu_times):.2f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"HF peak RSS {peak / 1e6:.0f} MB (whole process, torch included) = "
          f"{peak / weight_bytes:.2f} x weight bytes ({weight_bytes / 1e6:.0f} MB); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
