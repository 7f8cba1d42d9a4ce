"""docs/python.md is a session with real output: every `>>>` example runs and must print what
the page shows (like tests/circuits_tutorial.rs for the tutorial)."""

import doctest

from conftest import ROOT


def test_docs_python_md_runs_as_shown():
    result = doctest.testfile(
        str(ROOT / "docs" / "python.md"),
        module_relative=False,
        optionflags=doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.attempted > 20
    assert result.failed == 0, f"{result.failed} examples of docs/python.md differ (see above)"
