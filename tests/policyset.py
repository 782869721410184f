"""The policies whose generated C is pinned in tests/golden/ and compiled by
tests/test_compile.py: every example, and every tests/cases/*.fpol that checks with no
diagnostics at all. Each is checked under a fixed file name (`NAME.fpol`, no directory)
and lowered with that as source_name, so nothing depends on where the tests run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from fpol.compiler.driver import Checked, check
from fpol.compiler.lower import lower
from fpol.compiler.render import render

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


@dataclass(frozen=True)
class GoldenPolicy:
    name: str  # golden file stem: the example's stem, or cases-STEM
    path: Path

    @property
    def file_name(self) -> str:
        return self.path.name

    def checked(self) -> Checked:
        return _checked(self.path, self.file_name)

    def c(self, which: str = "struct_ops", abi=None) -> str:
        return _c(self.path, self.file_name, which, abi)

    def golden(self, which: str) -> Path:
        return GOLDEN_DIR / (f"{self.name}.bpf.c" if which == "struct_ops" else f"{self.name}.check.bpf.c")


@functools.lru_cache(maxsize=None)
def _checked(path: Path, file_name: str) -> Checked:
    return check(path.read_bytes(), file_name, origin=str(path))  # includes resolve beside it


@functools.lru_cache(maxsize=None)
def _c(path: Path, file_name: str, which: str, abi) -> str:
    checked = _checked(path, file_name)
    return render(lower(checked.classes, abi=abi, source_name=file_name), which)


@functools.lru_cache(maxsize=None)
def golden_policies() -> tuple[GoldenPolicy, ...]:
    out = [GoldenPolicy(p.stem, p) for p in sorted((ROOT / "examples").glob("*.fpol"))]
    for p in sorted((ROOT / "tests" / "cases").glob("*.fpol")):
        result = _checked(p, p.name)
        if result.ok and not result.diagnostics:
            out.append(GoldenPolicy(f"cases-{p.stem}", p))
    return tuple(out)
