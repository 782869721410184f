"""Shared pytest options for the fpol test suite."""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption(
        "--update-cases", action="store_true", default=False,
        help="rewrite the expectation comments in tests/cases/*.fpol from the actual "
             "diagnostics (like mypy's --update-data); review the diff before committing",
    )


# --- tests/test_golden.py: `pytest --update-goldens` rewrites tests/golden/*.bpf.c -------
_addoption_before_goldens = pytest_addoption


def pytest_addoption(parser):  # noqa: F811 (extends the hook above)
    _addoption_before_goldens(parser)
    parser.addoption(
        "--update-goldens", action="store_true", default=False,
        help="rewrite the generated-C goldens in tests/golden/ from the current compiler "
             "(tests/test_golden.py); review the diff before committing",
    )
