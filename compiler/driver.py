"""Runs the front end over one file and gathers what every stage found.

parse -> analyse -> classes -> lint, each with the cyclic GC paused (no_collections).
Later stages run only when the earlier ones found no errors, so every diagnostic
reported is a real one.

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
from .classes import ClassTree, TooComplex, build_raw, tables
from .minimise import minimise
from .diagnostics import Diagnostic, PolicyError, Reporter, Span
from .include import Reader, load, notes, spliced
from .lint import lint
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


@contextlib.contextmanager
def no_collections():
    """Pause Python's cyclic GC for one compile stage (a context manager, or a decorator).
    Even with few_collections' thresholds the collector took about a sixth of a
    10,000-rule compile rescanning objects that live to the stage's end; the stages make
    no cyclic garbage worth collecting early (fpol's peak memory is the same with and
    without). Only stages pause it: a daemon or language server that compiles on a reload
    collects as usual otherwise.

    At the end, what the stage made is moved to the oldest generation unscanned (freeze,
    then unfreeze): the collector still counted every allocation while paused, so it would
    otherwise scan all of them as young objects at the first allocation after the pause,
    about half a second at 10,000 rules. Garbage among them is still found by the next full
    collection."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


@dataclass
class Checked:
    tree: ast.PolicyFile
    source: Source
    policy: Optional[Policy]
    classes: Optional[ClassTree]
    diagnostics: list[Diagnostic]
    # sha256 of the bytes checked: every later stage works from this one read, so this
    # names exactly what was compiled (the file may have changed since). With includes,
    # of every file's name and bytes.
    digest: str = ""
    # Every file of the policy, the top one first (compiler/include.py).
    units: tuple = ()

    @property
    def sources(self) -> dict[str, list[str]]:
        """file -> source lines, for rendering diagnostics in any file of the policy."""
        out = {u.file: list(u.source.lines) for u in self.units}
        out.setdefault(self.source.file, list(self.source.lines))
        return out

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    def require(self) -> "Checked":
        """Raise PolicyError unless the policy is free of errors."""
        if not self.ok:
            raise PolicyError([d for d in self.diagnostics if d.is_error])
        return self


def check(data: "bytes | str", file: str, no_daemon: bool = False,
          build_classes: bool = True, origin: Optional[str] = None,
          reader: Optional[Reader] = None) -> Checked:
    """Check a policy given as bytes under the name `file`. Its includes are read relative
    to `origin` (where the file really is; by default `file` itself) by `reader`."""
    reporter = Reporter(file)
    with no_collections():
        units = load(data, file, reporter, origin, **({"reader": reader} if reader else {}))
    tree, source = units[0].tree, units[0].source
    if len(units) == 1:
        digest = hashlib.sha256(units[0].data).hexdigest()
    else:
        h = hashlib.sha256()
        for u in units:
            h.update(u.file.encode("utf-8", "surrogateescape") + b"\0")
            h.update(hashlib.sha256(u.data).digest())
        digest = h.hexdigest()
    with no_collections():
        policy = analyse(tree, reporter, no_daemon=no_daemon,
                         included=tuple(u.tree for u in units[1:]), statements=spliced(units))
    classes = None
    if build_classes and not reporter.has_errors:
        try:
            with no_collections():
                raw = build_raw(policy)
                table = tables(policy, raw)
                lint(policy, raw, table, reporter)
                classes = minimise(policy, raw, table)
        except TooComplex as e:
            span = e.rule.span if e.rule else Span.point(1, 1)
            reporter.add("FP026", f"policy too complex: {e}", span,
                         "split overlapping globs into fewer rules, or use `under` paths")
    return Checked(tree, source, policy if not reporter.has_errors else None,
                   classes if not reporter.has_errors else None,
                   notes(reporter.sorted(), units), digest, tuple(units))


def check_file(path: str, no_daemon: bool = False, build_classes: bool = True) -> Checked:
    """Read and check a file (OSError propagates: the caller decides how to say it)."""
    if path == "-":
        import sys

        data = sys.stdin.buffer.read()
        return check(data, "<stdin>", no_daemon, build_classes)
    with open(path, "rb") as f:
        data = f.read()
    return check(data, path, no_daemon, build_classes)
