"""circuit: circuit hypotheses as ``.circuit`` files, evaluated for faithfulness on a real
transformer on the CPU, from Python (docs/python.md).

Every function calls the same library code as the ``circuit`` command line, so the numbers are
the CLI's: ``evaluate(path)`` is ``circuit eval path --format json`` parsed by ``json.loads``.
Errors raise :class:`CircuitError` with ``.code``, ``.message`` and ``.report``; Ctrl-C
interrupts an evaluation between forward batches.
"""

import json as _json
import os as _os
from pathlib import Path as _Path

from . import _native
from ._native import CircuitError, Model

__all__ = [
    "CircuitError",
    "Model",
    "check",
    "discover",
    "evaluate",
    "export_graph",
    "format",
    "import_prompts",
    "scores",
    "test",
]


def _names(circuits):
    if circuits is None:
        return []
    if isinstance(circuits, str):
        return [circuits]
    return [str(c) for c in circuits]


def evaluate(path, circuits=None, *, model=None, cache=True):
    """Faithfulness of the circuits of a ``.circuit`` file (all of them, or those named in
    ``circuits``) against the full model and the empty circuit: the dict
    ``circuit eval PATH --format json`` prints. ``model`` overrides the file's model (a folder
    or a built-in name); ``cache=False`` neither reads nor writes the result cache."""
    text = _native.evaluate_json(_os.fspath(path), _names(circuits), model, cache)
    return _json.loads(text)


def check(path, *, model=None):
    """Resolves a ``.circuit`` file against its model's config and its dataset's labels.
    Returns its warnings (a list of dicts, as ``circuit check --format json``); raises
    :class:`CircuitError` (``.diagnostics``: every error and warning) when it does not resolve."""
    return _native.check(_os.fspath(path), model)


def test(path, *, model=None, cache=True):
    """Runs every ``expect`` of a ``.circuit`` file, or of every ``*.circuit`` file under a
    folder (sorted), as ``circuit test`` does. Returns one dict per expectation:
    ``{"file", "circuit", "expect", "passed", "measured"}``."""
    path = _Path(path)
    files = sorted(path.rglob("*.circuit")) if path.is_dir() else [path]
    results = []
    for file in files:
        results.extend(_native.test_file(_os.fspath(file), model, cache))
    return results


def scores(
    path,
    method="eap",
    granularity="nodes",
    circuit=None,
    *,
    steps=5,
    top=None,
    model=None,
    cache=True,
):
    """Attribution scores of a file's model on its dataset: the dict
    ``circuit scores PATH --method METHOD --granularity G --format json`` prints. ``method``:
    eap, eap-ig, attention, qkvo, dla; ``granularity``: nodes, qk-edges, path-edges;
    ``circuit``: scores relative to that circuit instead of the full model."""
    text = _native.scores_json(
        _os.fspath(path), method, granularity, circuit, steps, top, model, cache
    )
    return _json.loads(text)


def discover(
    path,
    target,
    rank="eap-ig",
    granularity="nodes",
    circuit=None,
    *,
    steps=5,
    attention_threshold=None,
    output=None,
    force=False,
    best_effort=False,
    cache=True,
):
    """A circuit of the file's model reaching faithfulness ``target``, found by ranking
    candidates by ``rank`` (eap-ig, eap, exact, qkvo, attention) at ``granularity`` (nodes,
    qk-edges) and checking by exact evaluations: the dict
    ``circuit discover PATH --target T --format json`` prints, the found ``.circuit`` file's
    text in its ``circuit_text``. ``circuit``: search inside that circuit of the file;
    ``output``: also write the found file there (an existing file only with ``force``);
    ``best_effort``: return the best circuit found when the target is out of reach. Ctrl-C
    interrupts between forward batches."""
    if output is not None:
        output = _os.fspath(output)
    text = _native.discover_json(
        _os.fspath(path),
        float(target),
        rank,
        steps,
        granularity,
        attention_threshold,
        circuit,
        output,
        force,
        best_effort,
        cache,
    )
    return _json.loads(text)


def format(text, name="<string>"):
    """The canonical form of ``.circuit`` text, as ``circuit fmt`` writes it."""
    return _native.format(text, name)


def export_graph(path, circuit, *, model=None):
    """One circuit of a ``.circuit`` file as the EAP-IG / MIB graph JSON (a dict), as
    ``circuit export PATH --circuit NAME --format eap-ig-json`` writes it; what the format cannot
    say (positions, QK edges) is in its ``positions`` and ``loss`` fields."""
    return _json.loads(_native.export_graph_json(_os.fspath(path), circuit, model))


def import_prompts(path, *, model=None, prepend_bos=True, drop=()):
    """An auto-circuit prompt file (``{"prompts": [{"clean", "corrupt", "answers",
    "wrong_answers"}], "seq_labels", "word_idxs"}``) as our dataset JSONL text, as
    ``circuit dataset import PATH`` writes it: token indices become character spans under the
    model's tokenizer (``model``: a folder or built-in name; default the built-in model)."""
    return _native.import_prompts_jsonl(_os.fspath(path), model, prepend_bos, list(drop))
