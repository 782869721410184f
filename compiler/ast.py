"""The syntax tree of a .fpol file: what was written, with source spans.

Nothing here is resolved yet: op names may be unknown, paths not normalised.
compiler/analyse.py turns this into a Policy.
"""

from __future__ import annotations

from dataclasses import dataclass
import re
from typing import Optional, Union

from .diagnostics import Span


@dataclass(frozen=True)
class Word:
    """A bare word (op name, errno, header value) and where it stands."""

    text: str
    span: Span


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class PathLit:
    """A path or glob as written: `raw` is the source text, `value` the decoded bytes."""

    raw: str
    value: bytes
    quoted: bool
    span: Span

    @property
    def ref(self) -> Optional[tuple[str, bytes]]:
        """`$NAME...` (LANGUAGE.md §7): the name and the bytes after it, else None. The
        name is the longest identifier after the `$` (`""` when none follows), or the one
        in braces (`${NAME}.d`); a `$` written as `\\x24` is a literal byte, not a
        reference."""
        body = self.raw[1:] if self.quoted else self.raw
        if not body.startswith("$"):
            return None
        if body.startswith("${"):  # `${NAME}rest`: the name ends at the brace
            m = _NAME.match(body, 2)
            name = m.group(0) if m else ""
            if body[2 + len(name):3 + len(name)] == "}":
                return name, self.value[3 + len(name.encode()):]
            return "", self.value[1:]  # `${` without a name and `}`: reported as FP035
        m = _NAME.match(body, 1)
        name = m.group(0) if m else ""
        return name, self.value[1 + len(name.encode()):]


@dataclass(frozen=True)
class Scope:
    kind: str  # "under" | "at" | "matching" | "named"
    path: PathLit
    span: Span


@dataclass(frozen=True)
class SubjectItem:
    """One subject as written (LANGUAGE.md §6): `uid N`, `uid N-M`, `gid N`, `gid N-M`,
    `user NAME` or `group NAME`. The value is checked and resolved by compiler/analyse.py."""

    kind: str  # "uid" | "gid" | "user" | "group"
    value: Word
    span: Span

    @property
    def text(self) -> str:
        return f"{self.kind} {self.value.text}"


@dataclass(frozen=True)
class By:
    """One `by SUBJECT {, SUBJECT}` clause: the span runs from `by` to the last item."""

    items: tuple[SubjectItem, ...]
    span: Span


@dataclass(frozen=True)
class Target:
    """`to userspace [before|after|instead]`; mode None means plain (instead)."""

    mode: Optional[str]
    span: Span


@dataclass(frozen=True)
class Header:
    """policy NAME | abi V | mode M | names N."""

    keyword: str
    value: Word
    span: Span


@dataclass(frozen=True)
class Default:
    action: Word  # allow | deny | redirect
    errno: Optional[Word]
    target: Optional[Target]
    span: Span


@dataclass(frozen=True)
class Rule:
    action: Word  # allow | deny | audit | redirect
    ops: tuple[Word, ...]
    target: Optional[Target]
    scopes: tuple[Scope, ...]
    excepts: tuple[tuple[Scope, ...], ...]  # one tuple per `except` clause
    errnos: tuple[Word, ...]  # one per `with` clause (more than one is an error)
    span: Span
    # One tuple per `by` clause (LANGUAGE.md §6; more than one is an error): alternatives.
    subjects: tuple[By, ...] = ()
    # The `by` items of every `except` clause, in the order written.
    except_subjects: tuple[SubjectItem, ...] = ()


@dataclass(frozen=True)
class Include:
    """include "FILE" (LANGUAGE.md §7)."""

    path: PathLit
    span: Span


@dataclass(frozen=True)
class Define:
    """define NAME = PATH {, PATH} (LANGUAGE.md §7)."""

    name: Word
    values: tuple[PathLit, ...]
    span: Span


Statement = Union[Header, Default, Rule, Include, Define]


@dataclass(frozen=True)
class Comment:
    text: str  # from the `#` to the end of the line, trailing blanks removed
    line: int
    column: int
    trailing: bool  # follows a statement on the same line


@dataclass(frozen=True)
class PolicyFile:
    file: str
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...]
    # Physical lines that are blank (no statement, no comment): fmt keeps paragraph breaks.
    blank_lines: frozenset[int]
    line_count: int

    def dump(self) -> str:
        """A readable, deterministic listing of the tree (`fpol compile --emit ast`)."""
        out = [f"PolicyFile {self.file}"]
        for st in self.statements:
            out.append("  " + _dump_statement(st))
        for c in self.comments:
            out.append(f"  Comment {c.line}:{c.column} {c.text!r}")
        return "\n".join(out) + "\n"


def _at(span: Span) -> str:
    return f"@{span.line}:{span.column}-{span.end_line}:{span.end_column}"


def _dump_scope(s: Scope) -> str:
    return f"{s.kind} {s.path.raw}"


def _dump_statement(st: Statement) -> str:
    if isinstance(st, Include):
        return f"Include {st.path.raw} {_at(st.span)}"
    if isinstance(st, Define):
        return f"Define {st.name.text} = " + ", ".join(v.raw for v in st.values) + f" {_at(st.span)}"
    if isinstance(st, Header):
        return f"Header {st.keyword} {st.value.text} {_at(st.span)}"
    if isinstance(st, Default):
        extra = f" with {st.errno.text}" if st.errno else ""
        extra += f" to userspace {st.target.mode or ''}".rstrip() if st.target else ""
        return f"Default {st.action.text}{extra} {_at(st.span)}"
    parts = [f"Rule {st.action.text}", "ops=[" + ", ".join(o.text for o in st.ops) + "]"]
    if st.target:
        parts.append(f"target={st.target.mode or 'instead'}")
    if st.scopes:
        parts.append("scopes=[" + ", ".join(_dump_scope(s) for s in st.scopes) + "]")
    for ex in st.excepts:
        parts.append("except=[" + ", ".join(_dump_scope(s) for s in ex) + "]")
    for by in st.subjects:
        parts.append("by=[" + ", ".join(s.text for s in by.items) + "]")
    if st.except_subjects:
        parts.append("except_by=[" + ", ".join(s.text for s in st.except_subjects) + "]")
    for e in st.errnos:
        parts.append(f"with={e.text}")
    return " ".join(parts) + " " + _at(st.span)
