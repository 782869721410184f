"""Shared pytest options for the fpol test suite."""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption(
        "--update-cases", action="store_true", default=False,
        help="rewrite the expectation comments in tests/cases/*.fpol from the actual "
             "diagnostics (like mypy's --update-data); review the diff before committing",
    )
