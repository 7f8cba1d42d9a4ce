#!/usr/bin/env python3
"""Train `toy-seqcont`, the small GPT-2 that `circuit` carries in its binary.

The model continues the built-in sequence-continuation tasks (numerals 1-99, number words
one..twenty, months, days, letters; bare sequences and sentence templates) exactly as the Rust
generators in src/data produce them, from the same src/data/lexicon.json.

Outputs (all written by this script):
  models/toy-seqcont/config.json, model.safetensors, tokenizer.json, README.md
  tests/fixtures/toy-seqcont-logits.json   (END logits from HF transformers, for the Rust tests)

Reproduce (CPU, 1 thread, seeded and deterministic; about 12 minutes on a busy 2-core machine):
  /tmp/venv/bin/python scripts/train_default_model.py

Prompt formats (must match the Rust generators):
  bare:      members joined by single spaces, "1 2 3 4" -> " 5" (2..6 members)
  template:  one sentence per member, "{filler} done in {member}." joined by single spaces, then
             the query "{filler} done in" with a fresh filler (fillers distinct in a prompt),
             "Van done in 1. Hat done in 2. Sun done in" -> " 3"
Numerals, number words and letters do not wrap (the answer must exist); months and days wrap.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
LEXICON_PATH = REPO / "src" / "data" / "lexicon.json"
MODEL_NAME = "toy-seqcont"

MIN_MEMBERS = 2
MAX_MEMBERS = 6
UNK = "[UNK]"
# The same split as the `Whitespace` pre-tokenizer of HF tokenizers: words or punctuation runs.
WORD_RE = re.compile(r"\w+|[^\w\s]+")
PLACEHOLDER_RE = re.compile(r"\{[A-Za-z0-9_]+\}")

KINDS = ["numerals", "number_words", "months", "days", "letters"]
FORMS = ["bare", "template"]


# ----------------------------------------------------------------------------------------------
# Vocabulary and tokenizer


def load_lexicon() -> dict:
    with open(LEXICON_PATH, encoding="utf-8") as f:
        return json.load(f)


def lexicon_words(lex: dict) -> list[str]:
    """Every word of the lexicon (members, fillers, template words, the IOI set), in a fixed
    order, deduplicated, after [UNK] and the punctuation "." and ","."""
    words: list[str] = [UNK, ".", ","]

    def add_text(text: str) -> None:
        for w in WORD_RE.findall(PLACEHOLDER_RE.sub(" ", text)):
            if w not in words:
                words.append(w)

    for kind in KINDS:
        for m in lex["sequences"][kind]["members"]:
            add_text(m)
    for name in sorted(lex["templates"]):
        t = lex["templates"][name]
        add_text(t["sentence"])
        add_text(t["query"])
    for w in lex["nouns"] + lex["names"]:
        add_text(w)
    ioi = lex["ioi"]
    for w in ioi["names"] + ioi["places"] + ioi["objects"]:
        add_text(w)
    for t in ioi["templates"]:
        add_text(t)
    return words


def build_tokenizer(words: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # Every word token decodes with a leading space, punctuation without one, as in GPT-2's
    # vocabulary: the answer id of " 7" decodes to " 7", a greedy continuation of "3 4 5 6"
    # decodes to " 7 8 9" (so prompt + continuation is the text), and a whole prompt decodes to
    # itself with one leading space: " Van done in 1. Sun done in".
    tok.decoder = decoders.Replace(Regex(r"^(?=\w)"), " ")
    # No post-processor: no BOS, position 0 is the first word of the prompt.
    return tok


# ----------------------------------------------------------------------------------------------
# Task prompts


@dataclass
class Prompt:
    kind: str
    form: str
    start: int  # index of S1 in the kind's member list
    n: int  # members shown
    words: list[str]  # the prompt as tokens (one word each)
    answer: str  # the answer word (the Rust side's answer string is " " + answer)
    # (position, target word) pairs where the next word is a member that follows from the
    # members before it: S2..Sn and the answer. Used for the auxiliary next-member loss.
    member_targets: list[tuple[int, str]]

    @property
    def text(self) -> str:
        return " ".join(self.words).replace(" .", ".").replace(" ,", ",")


class Tasks:
    def __init__(self, lex: dict):
        self.lex = lex
        self.seq = lex["sequences"]
        self.templates = lex["templates"]

    def members(self, kind: str) -> list[str]:
        return self.seq[kind]["members"]

    def valid_starts(self, kind: str, n: int) -> list[int]:
        """Starts whose n members and answer all exist (wrapping kinds: every start)."""
        size = len(self.members(kind))
        if self.seq[kind]["wraps"]:
            return list(range(size))
        return list(range(size - n))  # members start..start+n-1, answer start+n <= size-1

    def sequence(self, kind: str, start: int, n: int) -> list[str]:
        ms = self.members(kind)
        return [ms[(start + i) % len(ms)] for i in range(n + 1)]  # n members + the answer

    def fillers(self, kind: str) -> list[str]:
        t = self.templates[self.seq[kind]["template"]]
        return self.lex[t["fillers"]]

    def make(self, kind: str, form: str, start: int, n: int, fillers: list[str] | None) -> Prompt:
        seq = self.sequence(kind, start, n)
        members, answer = seq[:n], seq[n]
        words: list[str] = []
        targets: list[tuple[int, str]] = []
        if form == "bare":
            for i, m in enumerate(members):
                words.append(m)
                targets.append((len(words) - 1, seq[i + 1]))
        else:
            t = self.templates[self.seq[kind]["template"]]
            assert fillers is not None and len(fillers) == n + 1
            for i, m in enumerate(members):
                sentence = t["sentence"].replace("{filler}", fillers[i])
                before, after = sentence.split("{member}")
                words += WORD_RE.findall(before)
                if i >= 1:
                    targets.append((len(words) - 1, m))
                words.append(m)
                words += WORD_RE.findall(after)
            words += WORD_RE.findall(t["query"].replace("{filler}", fillers[n]))
            targets.append((len(words) - 1, answer))
        return Prompt(kind, form, start, n, words, answer, targets)

    def sample(self, rng: random.Random, kind: str, form: str, excluded=None) -> Prompt:
        """A prompt drawn uniformly: n in 2..6, a valid start, distinct fillers.
        `excluded(kind, form, start, n)` rejects held-out (start, n) combinations."""
        while True:
            n = rng.randint(MIN_MEMBERS, MAX_MEMBERS)
            start = rng.choice(self.valid_starts(kind, n))
            if excluded is not None and excluded(kind, form, start, n):
                continue
            fillers = rng.sample(self.fillers(kind), n + 1) if form == "template" else None
            return self.make(kind, form, start, n, fillers)


def heldout_combination(kind: str, form: str, start: int, n: int) -> bool:
    """Numeral (start, n) combinations never shown in training (either form): about one start
    in ten per length, so the test set has prompts whose exact member sequence is unseen."""
    return kind == "numerals" and start % 10 == (3 * n + 1) % 10


# ----------------------------------------------------------------------------------------------
# Training


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encode_batch(prompts: list[Prompt], vocab: dict[str, int], pad_id: int):
    """Right-padded ids (B, T) with answer targets and member targets; the causal mask makes
    right padding invisible to every real position, so no attention mask is needed."""
    t_max = max(len(p.words) for p in prompts)
    ids = torch.full((len(prompts), t_max), pad_id, dtype=torch.long)
    answer_pos = torch.zeros(len(prompts), dtype=torch.long)
    answer_id = torch.zeros(len(prompts), dtype=torch.long)
    aux_b, aux_t, aux_y = [], [], []
    for b, p in enumerate(prompts):
        ids[b, : len(p.words)] = torch.tensor([vocab[w] for w in p.words])
        answer_pos[b] = len(p.words) - 1
        answer_id[b] = vocab[p.answer]
        for pos, target in p.member_targets[:-1]:  # the last target is the answer itself
            aux_b.append(b)
            aux_t.append(pos)
            aux_y.append(vocab[target])
    aux = (torch.tensor(aux_b), torch.tensor(aux_t), torch.tensor(aux_y))
    return ids, answer_pos, answer_id, aux


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def logits_at(model, ids, batch_index, positions):
    """(N, V) logits at the (batch_index[i], positions[i]) pairs only: the unembedding of
    positions without a target would be wasted work."""
    hidden = model.transformer(input_ids=ids).last_hidden_state  # (B, T, D), after ln_f
    return model.lm_head(hidden[batch_index, positions])  # (N, V)


def batch_loss(model, prompts: list[Prompt], vocab, pad_id):
    """Summed answer and next-member cross-entropies of prompts of one form, and the number of
    next-member targets. One transformer pass; logits only where there is a target."""
    ids, answer_pos, answer_id, (aux_b, aux_t, aux_y) = encode_batch(prompts, vocab, pad_id)
    hidden = model.transformer(input_ids=ids).last_hidden_state  # (B, T, D)
    answer_logits = model.lm_head(hidden[torch.arange(len(prompts)), answer_pos])  # (B, V)
    aux_logits = model.lm_head(hidden[aux_b, aux_t])  # (N_aux, V)
    answer_loss = F.cross_entropy(answer_logits, answer_id, reduction="sum")
    aux_loss = F.cross_entropy(aux_logits, aux_y, reduction="sum")
    return answer_loss, aux_loss, len(aux_y)


@torch.no_grad()
def end_logits(model, prompts: list[Prompt], vocab: dict[str, int], pad_id: int, batch: int = 256):
    """(N, V) logits at each prompt's last position."""
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        ids, answer_pos, _, _ = encode_batch(chunk, vocab, pad_id)
        out.append(logits_at(model, ids, torch.arange(len(chunk)), answer_pos))
    return torch.cat(out)


def accuracy(model, prompts: list[Prompt], vocab, pad_id) -> tuple[float, float, int]:
    """(top-1 accuracy, mean answer cross-entropy, count)."""
    logits = end_logits(model, prompts, vocab, pad_id)
    target = torch.tensor([vocab[p.answer] for p in prompts])
    acc = (logits.argmax(-1) == target).float().mean().item()
    loss = F.cross_entropy(logits, target).item()
    return acc, loss, len(prompts)


def build_test_sets(tasks: Tasks, seed: int, n_template: int) -> dict[tuple[str, str], list[Prompt]]:
    """Bare sequences: every (start, n) of each kind (the space is small). Templates: random
    prompts from the test seed; for numerals they include the held-out (start, n) pairs."""
    rng = random.Random(seed)
    sets: dict[tuple[str, str], list[Prompt]] = {}
    for kind in KINDS:
        sets[(kind, "bare")] = [
            tasks.make(kind, "bare", start, n, None)
            for n in range(MIN_MEMBERS, MAX_MEMBERS + 1)
            for start in tasks.valid_starts(kind, n)
        ]
        sets[(kind, "template")] = [tasks.sample(rng, kind, "template") for _ in range(n_template)]
    return sets


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "models" / MODEL_NAME)
    ap.add_argument("--fixture", type=Path, default=REPO / "tests" / "fixtures" / "toy-seqcont-logits.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--aux-weight", type=float, default=0.5, help="weight of the next-member loss at S1..Sn")
    ap.add_argument("--n-layer", type=int, default=3)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-inner", type=int, default=256)
    ap.add_argument("--n-positions", type=int, default=64)
    ap.add_argument("--test-template", type=int, default=1000, help="held-out template prompts per kind")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1, help="1: on a shared, oversubscribed machine 2 threads ran 8x slower")
    ap.add_argument("--no-readme", action="store_true", help="do not write README.md (trial runs)")
    args = ap.parse_args()

    started = time.time()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    set_seed(args.seed)

    lex = load_lexicon()
    words = lexicon_words(lex)
    vocab = {w: i for i, w in enumerate(words)}
    pad_id = vocab[UNK]  # padding sits after the last real token and is never attended to
    tokenizer = build_tokenizer(words)
    tasks = Tasks(lex)

    # The tokenizer must give one token per word of every prompt, and one per answer string.
    for kind in KINDS:
        for m in tasks.members(kind):
            enc = tokenizer.encode(" " + m, add_special_tokens=False)
            assert enc.ids == [vocab[m]], (m, enc.tokens)
    test_sets = build_test_sets(tasks, args.test_seed, args.test_template)
    test_texts = {p.text for ps in test_sets.values() for p in ps if p.form == "template"}
    longest = max(len(p.words) for ps in test_sets.values() for p in ps)
    for ps in test_sets.values():
        for p in ps[:50]:
            enc = tokenizer.encode(p.text, add_special_tokens=False)
            assert enc.tokens == p.words, (p.text, enc.tokens)
    assert longest <= args.n_positions
    print(f"vocab {len(words)} words; longest test prompt {longest} tokens", flush=True)

    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(words),
        n_positions=args.n_positions,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_inner=args.n_inner,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.n_layer} layers, {args.n_head} heads, d_model {args.n_embd}, "
          f"d_mlp {args.n_inner}, {n_params} parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wpe" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98),
    )

    def excluded(kind, form, start, n):
        return heldout_combination(kind, form, start, n)

    train_rng = random.Random(args.seed)
    tasks_cycle = [(k, f) for k in KINDS for f in FORMS]
    rejected = 0
    recent: list[float] = []
    history = []
    model.train()
    for step in range(args.steps):
        batch = []
        while len(batch) < args.batch:
            kind, form = tasks_cycle[train_rng.randrange(len(tasks_cycle))]
            p = tasks.sample(train_rng, kind, form, excluded)
            if form == "template" and p.text in test_texts:
                rejected += 1  # never train on a held-out prompt
                continue
            batch.append(p)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        # Bare prompts (<= 6 tokens) and templates (<= 33) run as separate sub-batches, so the
        # short ones are not padded to template length (half the compute of one mixed batch).
        answer_sum, aux_sum, aux_count = 0.0, 0.0, 0
        for form in FORMS:
            group = [p for p in batch if p.form == form]
            if group:
                a, x, c = batch_loss(model, group, vocab, pad_id)
                answer_sum, aux_sum, aux_count = answer_sum + a, aux_sum + x, aux_count + c
        answer_loss = answer_sum / len(batch)
        aux_loss = aux_sum / aux_count
        loss = answer_loss + args.aux_weight * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(answer_loss.item())
        recent = recent[-100:]
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  answer loss {answer_loss.item():.4f} (avg100 {np.mean(recent):.4f})  "
                  f"aux {aux_loss.item():.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{time.time() - started:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            model.eval()
            accs = {f"{k}/{f}": accuracy(model, ps, vocab, pad_id)[0] for (k, f), ps in test_sets.items()}
            model.train()
            worst = min(accs, key=accs.get)
            print(f"  eval step {step + 1}: min {worst} {accs[worst]:.4f}  "
                  + " ".join(f"{k}={v:.3f}" for k, v in accs.items()), flush=True)
            history.append((step + 1, accs))
    train_seconds = time.time() - started
    final_train_loss = float(np.mean(recent))
    final_aux_loss = aux_loss.item()
    print(f"trained in {train_seconds:.0f}s; final answer loss (mean of last 100 steps) {final_train_loss:.3e}; "
          f"{rejected} sampled prompts rejected as held-out", flush=True)

    # ---- save: config.json, model.safetensors, tokenizer.json, nothing else
    out: Path = args.out
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.eval()
    model.save_pretrained(tmp)  # transformers 5 always writes safetensors
    tokenizer.save(str(tmp / "tokenizer.json"))
    for extra in tmp.iterdir():
        if extra.name not in ("config.json", "model.safetensors", "tokenizer.json"):
            extra.unlink()
    assert (tmp / "model.safetensors").exists()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        os.replace(tmp / name, out / name)
    tmp.rmdir()

    # ---- verify: reload the folder with HF and measure everything on the reloaded model
    from tokenizers import Tokenizer

    reloaded = GPT2LMHeadModel.from_pretrained(out)
    reloaded.eval()
    tok2 = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok2.get_vocab() == vocab
    assert tok2.decode([vocab["7"]]) == " 7"
    assert tok2.decode(tok2.encode("Van done in 1. Sun done in").ids) == " Van done in 1. Sun done in"
    results = {}
    for (kind, form), ps in test_sets.items():
        results[f"{kind}/{form}"] = accuracy(reloaded, ps, vocab, pad_id)
        if kind == "numerals":
            unseen = [p for p in ps if heldout_combination(kind, form, p.start, p.n)]
            results[f"{kind}/{form} (held-out start,n)"] = accuracy(reloaded, unseen, vocab, pad_id)
    # greedy answers through the saved tokenizer, ids straight from tokenizer.json
    demo_texts = [
        ("3 4 5 6", "7"),
        ("1 2 3 4", "5"),
        ("November December", "January"),
        ("Saturday Sunday", "Monday"),
        ("three four", "five"),
        ("H I J", "K"),
        ("Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in", "5"),
        ("Marcus born in January. Jamie born in February. Anna born in", "March"),
        ("Mary arrived on Friday. Tom arrived on Saturday. Kate arrived on", "Sunday"),
        ("Cup done in eighteen. Box done in nineteen. Pen done in", "twenty"),
        ("Car done in 28. Bag done in 29. Key done in", "30"),
        ("Bed done in W. Door done in X. Lamp done in", "Y"),
    ]
    demos = []
    fixture_prompts = []
    for text, answer in demo_texts:
        enc = tok2.encode(text, add_special_tokens=False)
        with torch.no_grad():
            logits = reloaded(input_ids=torch.tensor([enc.ids])).logits[0, -1]  # (V,)
        top = int(logits.argmax())
        got = tok2.id_to_token(top)
        demos.append((text, answer, got))
        fixture_prompts.append({
            "text": text,
            "ids": enc.ids,
            "answer": " " + answer,
            "answer_id": vocab[answer],
            "end_logits": [float(x) for x in logits.tolist()],
        })
    for text, answer, got in demos:
        print(f"  {text!r} -> {got!r} (expected {answer!r})")

    args.fixture.parent.mkdir(parents=True, exist_ok=True)
    fixture = {
        "_comment": "END logits of models/toy-seqcont computed by HF transformers "
                    "(GPT2LMHeadModel.from_pretrained, float32, CPU); written by scripts/train_default_model.py",
        "model": MODEL_NAME,
        "torch": torch.__version__,
        "prompts": fixture_prompts,
    }
    tmp_fixture = args.fixture.with_suffix(".json.tmp")
    tmp_fixture.write_text(json.dumps(fixture, indent=1) + "\n")
    os.replace(tmp_fixture, args.fixture)

    print("held-out top-1 accuracy (reloaded model):")
    for name, (acc, loss, count) in results.items():
        print(f"  {name:40s} {acc * 100:7.2f}%  ({count} prompts, answer loss {loss:.3e})")
    total_seconds = time.time() - started
    print(f"done in {total_seconds:.0f}s", flush=True)

    if args.no_readme:
        wrong = [(t, a, g) for t, a, g in demos if g != a]
        if wrong:
            sys.exit(f"greedy answers wrong: {wrong}")
        return
    import transformers
    import tokenizers as hf_tokenizers

    cmd = "/tmp/venv/bin/python scripts/train_default_model.py" + "".join(
        " " + shlex.quote(a) for a in sys.argv[1:])
    size = sum((out / n).stat().st_size for n in ("config.json", "model.safetensors", "tokenizer.json"))
    lines = [
        f"# {MODEL_NAME}: the built-in default model of `circuit`",
        "",
        "A small GPT-2 (HuggingFace layout) trained by this project on the built-in sequence-continuation",
        "tasks, so that every `circuit` command works offline without a downloaded model. It is compiled",
        "into the binary (src/model/builtin.rs); this folder is also an ordinary model folder",
        "(`circuit run --model models/toy-seqcont ...`, `GPT2LMHeadModel.from_pretrained`).",
        "",
        "This file is written by the training script; do not edit it by hand.",
        "",
        "## How it was trained",
        "",
        "```sh",
        cmd,
        "```",
        "",
        f"CPU, `torch.set_num_threads({args.threads})`, seeds {args.seed} (train) and {args.test_seed} (test) for",
        "`random`, `numpy` and `torch`, `torch.use_deterministic_algorithms(True)`.",
        f"Training took {train_seconds:.0f} s ({total_seconds:.0f} s with evaluation and saving) on this machine",
        "(2 cores shared with other jobs). One thread because, on this shared machine, two torch threads ran",
        "about 8x slower (30 steps: 71 s against 9 s) while other jobs kept both cores busy.",
        "Re-running the command gives byte-identical weights: two runs gave the same sha256 for config.json,",
        "model.safetensors and the logits fixture.",
        f"Versions: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"tokenizers {hf_tokenizers.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}.",
        "",
        "## Architecture",
        "",
        f"GPT-2 (`GPT2LMHeadModel`): {args.n_layer} layers, {args.n_head} heads, d_model {args.n_embd}, "
        f"d_head {args.n_embd // args.n_head}, d_mlp {args.n_inner},",
        f"vocabulary {len(words)} words, n_positions {args.n_positions}, gelu_new, tied embeddings, no dropout, "
        f"{n_params} parameters, float32.",
        "",
        "## Tokenizer",
        "",
        "Word-level (`tokenizers` WordLevel model, `Whitespace` pre-tokenizer: words and punctuation runs,",
        "a `Replace` decoder that puts a space before every word token, not before punctuation, so that",
        "`\" 7\"` decodes as `\" 7\"` and a prompt `3 4 5 6` as `\" 3 4 5 6\"`). The vocabulary is `[UNK]` (id 0, also used as",
        "right padding in training), `.`, `,` and every word of src/data/lexicon.json (members, fillers,",
        "template words, the IOI set). No BOS token is added: position 0 is the first word. Every answer",
        "string (`\" 5\"`, `\" May\"`, `\" five\"`, `\" K\"`) is one token.",
        "",
        "## Data",
        "",
        "Generated on the fly from src/data/lexicon.json, in the formats of the Rust generators:",
        "five kinds (numerals 1–99, number words one…twenty, months, days, letters A–Z) × two forms:",
        "",
        "- bare: 2–6 consecutive members joined by single spaces, `1 2 3 4` → ` 5`;",
        "- template: one sentence per member, e.g. `Van done in 1.`, joined by single spaces, then the query",
        "  with a fresh filler: `Van done in 1. Hat done in 2. Sun done in` → ` 3`; fillers are distinct",
        "  within a prompt (nouns for `done in`, names for `born in` / `arrived on`).",
        "",
        "Numerals, number words and letters do not wrap (the answer exists); months and days wrap",
        "(`November December` → ` January`). Each batch draws a task (kind × form) uniformly, then the",
        "number of members uniformly in 2–6, then a valid start uniformly.",
        "",
        f"Loss: cross-entropy of the answer at the last position, plus {args.aux_weight} × cross-entropy of the",
        "next member at the positions where it follows from earlier members (S2…Sn: in bare prompts at the",
        "previous member, in templates at the `in`/`on` before it).",
        f"Optimizer: AdamW (betas 0.9/0.98, weight decay {args.weight_decay} on matrices), peak lr {args.lr},",
        f"{args.warmup} warm-up steps then cosine decay to 5%, gradient clipping 1.0, {args.steps} steps of",
        f"{args.batch} prompts ({args.steps * args.batch} prompts in all).",
        "",
        "Held-out data: numeral (start, n) combinations with start % 10 == (3n + 1) % 10 (about one in ten)",
        "never appear in training, in either form. The template test prompts "
        f"({args.test_template} per kind, seed {args.test_seed})",
        f"are excluded from training by exact text ({rejected} sampled training prompts were rejected).",
        "Bare test sets are exhaustive: every (start, n) of each kind.",
        "",
        "## Results",
        "",
        f"Final training answer loss (mean of the last 100 steps): {final_train_loss:.3e}; final next-member "
        f"loss (last step): {final_aux_loss:.3e}.",
        "",
        "Held-out top-1 accuracy of the answer at the last position, measured by the script on the saved",
        "folder reloaded with `GPT2LMHeadModel.from_pretrained`:",
        "",
        "| task | top-1 accuracy | prompts | answer loss |",
        "|---|---|---|---|",
    ]
    for name, (acc, loss, count) in results.items():
        lines.append(f"| {name} | {acc * 100:.2f}% | {count} | {loss:.3e} |")
    lines += [
        "",
        "Greedy answers of the reloaded model:",
        "",
    ]
    for text, answer, got in demos:
        lines.append(f"- `{text}` → `\" {got}\"`")
    lines += [
        "",
        "tests/fixtures/toy-seqcont-logits.json holds these prompts' token ids and END logits from HF",
        "transformers, for the Rust engine's exactness test (tests/builtin_model.rs).",
        "",
        "## Files",
        "",
        f"{size} bytes in all (README excluded).",
        "",
        "| file | sha256 |",
        "|---|---|",
    ]
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        lines.append(f"| {name} | `{sha256(out / name)}` |")
    lines.append("")
    (out / "README.md").write_text("\n".join(lines))
    print(f"wrote {out}/README.md")
    wrong = [(t, a, g) for t, a, g in demos if g != a]
    if wrong:
        sys.exit(f"greedy answers wrong: {wrong}")


if __name__ == "__main__":
    main()
