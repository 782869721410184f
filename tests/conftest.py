"""Shared pytest options for the fpol test suite."""

from __future__ import annotations

import os

from hypothesis import settings

# The suite's property tests draw the same examples on every run (derandomised, per test),
# so a change is judged on its own and CI on a clean checkout sees what the developer saw.
# FPOL_FUZZ_SCALE above 1 (docs/fuzzing.md) searches anew each run, with more examples
# where a test scales them; what it finds becomes an @example or a test of its own.
settings.register_profile("suite", derandomize=True, database=None)
settings.register_profile("search", derandomize=False)
settings.load_profile("suite" if int(os.environ.get("FPOL_FUZZ_SCALE", "1")) <= 1 else "search")


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
