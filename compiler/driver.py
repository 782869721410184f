"""Runs the front end over one file and gathers what every stage found.

parse -> analyse -> classes -> lint. Later stages run only when the earlier ones
found no errors, so every diagnostic reported is a real one.

The policy is read once, as bytes, and every stage works from that one copy (a file
that changes during a compile is compiled as it was read); `Checked.digest` names it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
from dataclasses import dataclass
from typing import Optional

from . import ast
from .analyse import analyse
from .classes import ClassTree, TooComplex, build_raw, minimise, tables
from .diagnostics import Diagnostic, PolicyError, Reporter, Span
from .lint import lint
from .parser import parse
from .policy import Policy
from .source import Source


@contextlib.contextmanager
def few_collections():
    """Run the compiler with Python's cyclic GC asked to collect young objects less often.
    A compile allocates millions of small objects that live to its end, and with the
    default thresholds the collector rescans them over and over: about 40% of the time of
    a 10,000-rule compile (benchmarks/REPORT.md). Nothing the compiler makes is cyclic
    garbage worth collecting early."""
    old = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*old)


@dataclass
class Checked:
    tree: ast.PolicyFile
    source: Source
    policy: Optional[Policy]
    classes: Optional[ClassTree]
    diagnostics: list[Diagnostic]
    # sha256 of the bytes checked: every later stage works from this one read, so this
    # names exactly what was compiled (the file may have changed since).
    digest: str = ""

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    def require(self) -> "Checked":
        """Raise PolicyError unless the policy is free of errors."""
        if not self.ok:
            raise PolicyError([d for d in self.diagnostics if d.is_error])
        return self


def check(data: "bytes | str", file: str, no_daemon: bool = False,
          build_classes: bool = True) -> Checked:
    digest = hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()
    reporter = Reporter(file)
    tree, source, _ = parse(data, file, reporter)
    policy = analyse(tree, reporter, no_daemon=no_daemon)
    classes = None
    if build_classes and not reporter.has_errors:
        try:
            raw = build_raw(policy)
            table = tables(policy, raw)
            lint(policy, raw, table, reporter)
            classes = minimise(policy, raw, table)
        except TooComplex as e:
            span = e.rule.span if e.rule else Span.point(1, 1)
            reporter.add("FP026", f"policy too complex: {e}", span,
                         "split overlapping globs into fewer rules, or use `under` paths")
    return Checked(tree, source, policy if not reporter.has_errors else None,
                   classes if not reporter.has_errors else None, reporter.sorted(), digest)


def check_file(path: str, no_daemon: bool = False, build_classes: bool = True) -> Checked:
    """Read and check a file (OSError propagates: the caller decides how to say it)."""
    if path == "-":
        import sys

        data = sys.stdin.buffer.read()
        return check(data, "<stdin>", no_daemon, build_classes)
    with open(path, "rb") as f:
        data = f.read()
    return check(data, path, no_daemon, build_classes)
