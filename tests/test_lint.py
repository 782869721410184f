"""ruff and mypy report nothing (configured in pyproject.toml; `make lint` runs the same)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = "scripts/lint"


@pytest.mark.parametrize("tool", ["ruff", "mypy"])
def test_lint(tool):
    # mypy keeps its cache in .mypy_cache: a first run takes half a minute, later ones seconds.
    r = subprocess.run([str(ROOT / LINT), tool], capture_output=True, text=True, cwd=str(ROOT),
                       env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert r.returncode == 0, f"`{LINT} {tool}` reports:\n{r.stdout}{r.stderr}"
