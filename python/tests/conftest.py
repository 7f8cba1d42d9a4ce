"""Shared helpers: the repository root, the `circuit` binary the numbers are compared with
(`$CIRCUIT_BIN`, default target/release/circuit: `.ci/run` builds it first), and one test-only
result cache for both sides (never the user's)."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("CIRCUIT_BIN", ROOT / "target" / "release" / "circuit"))
CACHE = Path(tempfile.gettempdir()) / "circuit-python-test-cache"

os.environ["CIRCUIT_CACHE_DIR"] = str(CACHE)
os.environ["NO_COLOR"] = "1"


def cli(*args, check=True):
    """Runs `circuit ARGS` from the repository root; returns the completed process."""
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: run `cargo build --release` first (or set CIRCUIT_BIN)")
    out = subprocess.run(
        [str(BIN), *map(str, args)], cwd=ROOT, capture_output=True, text=True
    )
    if check and out.returncode != 0:
        pytest.fail(f"circuit {' '.join(map(str, args))} failed:\n{out.stderr}")
    return out


def cli_json(*args):
    return json.loads(cli(*args).stdout)


@pytest.fixture(autouse=True)
def in_root(monkeypatch):
    """Relative paths as the CLI sees them: every test runs in the repository root."""
    monkeypatch.chdir(ROOT)
