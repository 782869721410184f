"""Includes (LANGUAGE.md §7): the files a policy is made of.

`load` parses the top file and, depth first, every file it includes (resolved relative to
the including file), each file once. Problems belong to the file they are in: FP030 (an
included file that cannot be read), FP031 (an include that closes a cycle); `notes` adds
to every diagnostic inside an included file the chain of include lines that brought it
in ("included from here"). Definitions and the expansion of `$NAME` live in analyse.py.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Callable, Optional

from . import ast
from .diagnostics import Diagnostic, Reporter, Span
from .parser import parse
from .source import Source

# How an include is read: (absolute path) -> bytes; raises OSError.
Reader = Callable[[str], bytes]


def _read(path: str) -> bytes:
    # O_NONBLOCK: a FIFO named by mistake must not hang the compile; only regular files
    # are read (not /dev/zero, a directory, a socket).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return f.read()


@dataclass(frozen=True)
class Unit:
    """One file of a policy."""

    file: str  # the name diagnostics use (relative to the top file's name)
    tree: ast.PolicyFile
    source: Source
    # The include lines that brought this file in, nearest first: (file, span).
    included_from: tuple[tuple[str, Span], ...]
    data: bytes  # the bytes read (the top file: as given)
    where: str = ""  # the file's path on disk (absolute), for tools that rewrite it


def _encode(data: "bytes | str") -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def load(data: "bytes | str", file: str, reporter: Reporter, origin: Optional[str] = None,
         reader: Reader = _read) -> list[Unit]:
    """The top file and every file it includes, in include order (top first). `origin` is
    where the top file really is (for resolving includes); by default its name."""
    tree, source, _ = parse(data, file, reporter)
    where = os.path.abspath(origin if origin is not None else
                            (file if file != "<stdin>" else "stdin"))
    top = Unit(file, tree, source, (), _encode(data), where)
    units = [top]
    done: set[str] = {os.path.realpath(where)}
    _walk(top, where, [os.path.realpath(where)], done, units, reporter, reader)
    return units


def _walk(unit: Unit, where: str, stack: list[str], done: set[str], units: list[Unit],
          reporter: Reporter, reader: Reader) -> None:
    here = reporter.for_file(unit.file)
    for st in unit.tree.statements:
        if not isinstance(st, ast.Include):
            continue
        lit = st.path
        if lit.ref is not None:
            here.add("FP030", "`include` names a file, not a `$NAME` path", lit.span,
                     "write the file name, relative to this file: `include \"common/x.fpol\"`")
            continue
        try:
            name = lit.value.decode("utf-8")
        except UnicodeDecodeError:
            name = lit.value.decode("utf-8", "replace")
        if not name or "\0" in name:
            here.add("FP030", "`include` needs a file name", lit.span,
                     "write e.g. `include \"common/credentials.fpol\"`")
            continue
        target = os.path.normpath(os.path.join(os.path.dirname(where), name))
        real = os.path.realpath(target)
        display = name if os.path.isabs(name) else os.path.normpath(
            os.path.join(os.path.dirname(unit.file), name))
        if real in stack:
            chain = [u for u in stack[stack.index(real):]] + [real]
            shown = " -> ".join(os.path.basename(p) for p in chain)
            here.add("FP031", f"include cycle: {shown}", st.span,
                     "a file cannot include itself, directly or through others; "
                     "move what both need into a third file")
            continue
        if real in done:
            continue  # a file included twice counts once
        try:
            data = reader(target)
        except OSError as e:
            reason = e.strerror or str(e)
            here.add("FP030", f"cannot read included file `{name}`: {reason}", lit.span,
                     "includes are resolved relative to the directory of the including "
                     f"file (`{os.path.dirname(unit.file) or '.'}`)")
            continue
        done.add(real)
        sub = reporter.for_file(display)
        tree, source, _ = parse(data, display, sub)
        child = Unit(display, tree, source, ((unit.file, st.span),) + unit.included_from, data,
                     target)
        units.append(child)
        _walk(child, target, stack + [real], done, units, reporter, reader)


def spliced(units: list[Unit]) -> list[tuple[str, ast.Statement]]:
    """Every statement of the policy as (file, statement), an included file's statements
    in place of the include that first brought it in: rules keep the order of the policy
    written out inline (rule numbers, and so the C, are the same)."""
    children = {(u.included_from[0][0], u.included_from[0][1]): u for u in units[1:]}
    out: list[tuple[str, ast.Statement]] = []

    def walk(unit: Unit) -> None:
        for st in unit.tree.statements:
            child = children.get((unit.file, st.span)) if isinstance(st, ast.Include) else None
            if child is not None:
                walk(child)
            else:
                out.append((unit.file, st))

    walk(units[0])
    return out


def notes(diagnostics: list[Diagnostic], units: list[Unit]) -> list[Diagnostic]:
    """Each diagnostic in an included file gains "included from here" notes (the include
    lines, nearest first); identical diagnostics (one per expansion of a definition) once."""
    chains = {u.file: u.included_from for u in units}
    out: list[Diagnostic] = []
    seen = set()
    for d in diagnostics:
        key = (d.file, d.span, d.code, d.message)
        if key in seen:
            continue
        seen.add(key)
        chain = chains.get(d.file, ())
        if chain:
            extra = tuple(("included from here", span, file) for file, span in chain)
            d = Diagnostic(d.code, d.message, d.file, d.span, d.hint, d.related + extra)
        out.append(d)
    return out
