"""Long work releases the GIL, and Ctrl-C (SIGINT) interrupts an evaluation between forward
batches with `KeyboardInterrupt`."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import circuit
from conftest import ROOT


def big_file(tmp_path, n):
    path = tmp_path / "big.circuit"
    path.write_text(
        'model "toy-seqcont"\n'
        f"dataset numerals = seqcont.numerals(n = {n}, seed = 0)\n"
        "reference numerals.corrupt\nablate heads and mlps by mean\nmetric logit_diff\n\n"
        "circuit c {\n  0.0..3 @ END\n  mlp 0..2\n}\n"
    )
    return path


def test_an_evaluation_lets_other_python_threads_run(tmp_path):
    path = big_file(tmp_path, 3000)
    result = {}
    worker = threading.Thread(target=lambda: result.update(circuit.evaluate(path, cache=False)))
    ticks = 0
    start = time.monotonic()
    worker.start()
    while worker.is_alive():
        ticks += 1
        time.sleep(0.001)
    elapsed = time.monotonic() - start
    assert result["circuits"][0]["name"] == "c"
    # Held GIL: the loop would not run at all while Rust works.
    assert elapsed > 0.3, f"too quick to tell ({elapsed:.2f}s)"
    # At least 20 ticks a second (a free main thread gives hundreds).
    assert ticks > 20 * elapsed, (ticks, elapsed)


def interrupt_after_two_seconds(call):
    """Runs `circuit.CALL` (the text of a call whose `PATH` is replaced) on a file of 200,000
    prompts in a child interpreter, sends SIGINT two seconds in, and checks the call raised
    `KeyboardInterrupt` soon after."""
    script = textwrap.dedent(
        f"""
        import sys, time, circuit
        print("ready", flush=True)
        start = time.monotonic()
        try:
            {call}
        except KeyboardInterrupt:
            print(f"interrupted after {{time.monotonic() - start:.1f}}s", flush=True)
            sys.exit(3)
        print("finished", flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "ready"
    time.sleep(2.0)  # into the evaluation (opening generates and tokenizes the prompts)
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    waited = time.monotonic() - sent
    assert child.returncode == 3, (child.returncode, out, err)
    assert "interrupted after" in out
    assert waited < 60, f"the interrupt took {waited:.1f}s"


def test_sigint_interrupts_a_long_evaluation(tmp_path):
    path = big_file(tmp_path, 200000)
    interrupt_after_two_seconds(f"circuit.evaluate({str(path)!r}, cache=False)")


def test_sigint_interrupts_a_long_discovery(tmp_path):
    # Interrupted in its first evaluations (the full model and the empty circuit).
    path = big_file(tmp_path, 200000)
    interrupt_after_two_seconds(f"circuit.discover({str(path)!r}, 0.9, rank='eap', cache=False)")
