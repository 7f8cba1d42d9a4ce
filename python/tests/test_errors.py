"""Every error path raises: coded library errors as `circuit.CircuitError` with `.code`,
`.message` and `.report`, bad arguments as `TypeError`/`ValueError`, and a Rust panic as a
`CircuitError` the interpreter survives."""

import pytest

import circuit

NUMERALS = "circuits/toy-seqcont/numerals_template.circuit"


def raises(code, call, *args, **kwargs):
    with pytest.raises(circuit.CircuitError) as e:
        call(*args, **kwargs)
    error = e.value
    assert error.code == code, (error.code, error.message)
    assert isinstance(error.message, str) and error.message
    assert str(error) == error.message
    assert "×" in error.report, error.report
    return error


def test_a_missing_file_is_a_coded_error_everywhere(tmp_path):
    missing = tmp_path / "missing.circuit"
    for call in [circuit.evaluate, circuit.check, circuit.test]:
        error = raises("circuit::check::read", call, missing)
        assert "cannot read" in error.message
        assert "×" in error.report and "help:" in error.report
    raises("circuit::check::read", circuit.scores, missing)
    raises("circuit::check::read", circuit.export_graph, missing, "c")


def test_resolve_errors_carry_every_diagnostic(tmp_path):
    path = tmp_path / "bad.circuit"
    path.write_text(
        'model "toy-seqcont"\ndataset d = seqcont.numerals(n = 8)\n'
        "circuit c {\n  7.1 @ END\n  0.1 @ S9\n}\n"
    )
    error = raises("circuit::resolve::unknown_head", circuit.check, path)
    assert "(and 1 more errors)" in error.message
    codes = [d["code"] for d in error.diagnostics]
    assert codes == ["circuit::resolve::unknown_head", "circuit::resolve::unknown_label"]
    assert "7.1" in error.report and "S9" in error.report
    raises("circuit::resolve::unknown_head", circuit.evaluate, path)


def test_an_unknown_circuit_name_is_coded():
    error = raises("circuit::eval::unknown_circuit", circuit.evaluate, NUMERALS, "mover")
    assert "did you mean" in error.report
    raises("circuit::eval::unknown_circuit", circuit.scores, NUMERALS, circuit="mover")
    raises("circuit::eval::unknown_circuit", circuit.export_graph, NUMERALS, "mover")


def test_a_graph_export_on_a_post_norm_model_is_coded():
    gemma2 = "tests/fixtures/models/gemma2-bf16"
    error = raises(
        "circuit::export::post_norm", circuit.export_graph, NUMERALS, "movers_from_s4", model=gemma2
    )
    assert "post-norms" in error.message


def test_bad_score_requests_raise():
    with pytest.raises(ValueError, match="unknown method"):
        circuit.scores(NUMERALS, method="acdc")
    with pytest.raises(ValueError, match="unknown granularity"):
        circuit.scores(NUMERALS, granularity="edges")
    with pytest.raises(ValueError, match="top=0"):
        circuit.scores(NUMERALS, top=0)


def test_a_syntax_error_in_format_is_coded():
    error = raises("circuit::parse::syntax", circuit.format, "circuit {")
    assert error.diagnostics and error.diagnostics[0]["code"] == error.code


def test_import_errors_are_coded(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"word_idxs": {"S1": 0}, "prompts": [{"clean": "1 2", "corrupt": "3 4", "answers": [" 3"], "wrong_answers": [" 2"]}]}')
    error = raises("circuit::data::import_label", circuit.import_prompts, path)
    assert "prepended BOS" in error.message
    path.write_text("[]")
    raises("circuit::data::import_format", circuit.import_prompts, path)


def test_a_panic_becomes_an_exception_and_the_interpreter_lives_on():
    error = raises("circuit::python::panic", circuit._native._panic_for_test, "boom")
    assert "boom" in error.message and "a bug in circuit" in error.message
    assert error.report.startswith("circuit::python::panic")
    assert isinstance(error, Exception)
    assert circuit.format('model "toy-seqcont"\n') == 'model "toy-seqcont"\n'


def test_bad_discover_requests_raise_with_the_cli_codes(tmp_path):
    path = tmp_path / "small.circuit"
    path.write_text(
        'model "toy-seqcont"\ndataset d = seqcont.numerals(n = 8, seed = 0)\n\n'
        "circuit c {\n  0.0 @ END\n  edge 0.0 -> 1.0.v\n}\n"
    )
    existing = tmp_path / "found.circuit"
    existing.write_text("keep me\n")
    cases = [
        (dict(target=1.6), "circuit::discover::target_range"),
        (dict(target=0.9, circuit="d"), "circuit::discover::unknown_base"),
        (dict(target=0.9, circuit="c"), "circuit::discover::base_path_edges"),
        (dict(target=0.9, attention_threshold=0.1), "circuit::discover::threshold_needs_qk_edges"),
        (dict(target=0.9, output=existing), "circuit::discover::output_exists"),
        (dict(target=0.9, output=path, force=True), "circuit::output::is_input"),
    ]
    for kwargs, code in cases:
        with pytest.raises(circuit.CircuitError) as e:
            circuit.discover(path, **kwargs)
        assert e.value.code == code, (kwargs, e.value.report)
    assert existing.read_text() == "keep me\n"
    with pytest.raises(ValueError, match="unknown rank"):
        circuit.discover(path, 0.9, rank="dla")
