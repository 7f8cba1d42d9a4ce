"""The package returns exactly what the command line prints: the same library calls, parsed by
`json.loads` on both sides, compared with `==` (no tolerance)."""

import re

import circuit
from conftest import ROOT, cli, cli_json

NUMERALS = "circuits/toy-seqcont/numerals_template.circuit"


def test_evaluate_equals_eval_json():
    assert circuit.evaluate(NUMERALS) == cli_json("eval", NUMERALS, "--format", "json")


def test_evaluate_of_named_circuits_equals_eval_json():
    names = ["movers_from_s4", "movers_nodes"]
    expected = cli_json(
        "eval", NUMERALS, "--circuit", names[0], "--circuit", names[1], "--format", "json"
    )
    assert circuit.evaluate(NUMERALS, names) == expected
    assert [c["name"] for c in expected["circuits"]] == names
    one = circuit.evaluate(NUMERALS, "movers_nodes")
    assert one == cli_json("eval", NUMERALS, "--circuit", "movers_nodes", "--format", "json")


def test_evaluate_without_cache_gives_the_same_numbers():
    assert circuit.evaluate(NUMERALS, cache=False) == circuit.evaluate(NUMERALS)


def test_scores_equal_scores_json():
    for args in [
        dict(method="eap", granularity="nodes"),
        dict(method="eap-ig", granularity="path-edges", steps=3, top=10),
        dict(method="attention", granularity="qk-edges", top=5),
    ]:
        flags = ["--method", args["method"], "--granularity", args["granularity"]]
        if "steps" in args:
            flags += ["--steps", str(args["steps"])]
        if "top" in args:
            flags += ["--top", str(args["top"])]
        expected = cli_json("scores", NUMERALS, *flags, "--format", "json")
        assert circuit.scores(NUMERALS, **args) == expected, args


def test_scores_relative_to_a_circuit_equal_the_cli():
    expected = cli_json("scores", NUMERALS, "--circuit", "movers_nodes", "--format", "json")
    assert circuit.scores(NUMERALS, circuit="movers_nodes") == expected


def test_check_returns_the_warnings_check_json_prints():
    path = "tests/fixtures/ok/warnings.circuit"
    warnings = circuit.check(path)
    expected = cli_json("check", path, "--format", "json")
    assert len(warnings) == len(expected) > 0
    for got, want in zip(warnings, expected):
        # `check --format json` adds the file name for multi-file output.
        assert {**got, "file": want["file"]} == want
    assert circuit.check(NUMERALS) == []


def test_test_returns_what_circuit_test_prints():
    folder = "circuits/toy-seqcont"
    lines = cli("test", folder).stdout.splitlines()
    assert lines[-1].endswith("0 failed")
    results = circuit.test(folder)
    printed = []
    for r in results:
        status = "ok  " if r["passed"] else "FAIL"
        printed.append(f"{status} {r['file']} {r['circuit']}: {r['expect']} {r['measured']}")
    assert printed == lines[:-1]
    assert len(results) > 5 and all(r["passed"] for r in results)
    one = circuit.test(NUMERALS)
    assert one == [r for r in results if r["file"] == NUMERALS]


def test_format_equals_fmt():
    messy = 'model   "toy-seqcont"\ndataset d=seqcont.numerals(n=8)\ncircuit c {\n 0.1@END   # kept\n}\n'
    out = cli_input("fmt", "-", stdin=messy)
    assert circuit.format(messy) == out
    assert circuit.format(out) == out


def cli_input(*args, stdin):
    import subprocess
    from conftest import BIN

    return subprocess.run(
        [str(BIN), *args], cwd=ROOT, input=stdin, capture_output=True, text=True, check=True
    ).stdout


def test_export_graph_equals_export():
    expected = cli_json("export", NUMERALS, "--circuit", "movers_from_s4")
    graph = circuit.export_graph(NUMERALS, "movers_from_s4")
    assert graph == expected
    assert graph["cfg"] == {"n_layers": 3, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 64}
    assert graph["positions"]["nodes"]["a0.h0"] == "END"


AUTO_CIRCUIT = """{
 "word_idxs": {"S1": 1, "S2": 2, "S2+1": 3, "S3": 3},
 "prompts": [
  {"clean": "1 2 3", "corrupt": "7 1 9", "answers": [" 4"], "wrong_answers": [" 3"]},
  {"clean": "5 6 7", "corrupt": "2 8 4", "answers": [" 8"], "wrong_answers": [" 7"]}
 ]}"""


def test_import_prompts_equals_dataset_import(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(AUTO_CIRCUIT)
    out = cli("dataset", "import", path)
    import pytest

    with pytest.warns(UserWarning, match="S2\\+1 are offsets"):
        jsonl = circuit.import_prompts(path)
    assert jsonl == out.stdout
    assert "S2+1 are offsets" in out.stderr
    assert re.search(r'"S3":\[4,5\]', jsonl.splitlines()[0])


# The file tests/discover_cli.rs discovers on (16 prompts).
SMALL = (ROOT / "tests/fixtures/discover/small.circuit").read_text()


def test_discover_equals_discover_json(tmp_path):
    path = tmp_path / "small.circuit"
    path.write_text(SMALL)
    expected = cli_json("discover", path, "--target", "0.9", "--format", "json")
    assert circuit.discover(path, 0.9) == expected
    assert expected["written"] is None and "circuit found {" in expected["circuit_text"]
    # A base circuit, another rank and granularity, best effort.
    flags = ["--circuit", "movers_nodes", "--rank", "eap", "--granularity", "qk-edges", "--best-effort"]
    expected = cli_json("discover", path, "--target", "0.95", *flags, "--format", "json")
    got = circuit.discover(
        path, 0.95, rank="eap", granularity="qk-edges", circuit="movers_nodes", best_effort=True
    )
    assert got == expected
    assert expected["base"] == "movers_nodes"


def test_discover_writes_the_file_the_cli_writes(tmp_path):
    path = tmp_path / "small.circuit"
    path.write_text(SMALL)
    (tmp_path / "out").mkdir()
    by_cli, by_python = tmp_path / "out" / "cli.circuit", tmp_path / "out" / "py.circuit"
    expected = cli_json(
        "discover", path, "--target", "0.9", "--rank", "exact", "-o", by_cli, "--format", "json"
    )
    got = circuit.discover(path, 0.9, rank="exact", output=by_python)
    assert got["written"] == str(by_python)
    assert {**got, "written": expected["written"]} == expected
    assert by_python.read_text() == by_cli.read_text() == got["circuit_text"]
    # Relative to the output's folder, as the CLI writes it.
    assert 'model "toy-seqcont"' in got["circuit_text"]
    again = circuit.discover(path, 0.9, rank="exact", output=by_python, force=True)
    assert again == got
