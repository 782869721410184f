"""Diagnostics: every problem fpol reports about a policy, with its place in the source.

Each diagnostic has a stable code (FPnnn). Errors are FP0xx, warnings FP1xx. The
table below is the single list of codes; docs/language.md documents each with an
example, and tests/cases/ covers each one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional
from .errors import FpolError

ERROR = "error"
WARNING = "warning"

# code -> (severity, short title)
CODES: dict[str, tuple[str, str]] = {
    "FP001": (ERROR, "syntax error"),
    "FP002": (ERROR, "invalid source encoding"),
    "FP003": (ERROR, "unknown operation or group"),
    "FP004": (ERROR, "unknown errno"),
    "FP005": (ERROR, "invalid header value"),
    "FP006": (ERROR, "duplicate header statement"),
    "FP007": (ERROR, "invalid policy name"),
    "FP008": (ERROR, "policy name too long"),
    "FP010": (ERROR, "bad path"),
    "FP011": (ERROR, "bad glob"),
    "FP012": (ERROR, "bad string escape"),
    "FP020": (ERROR, "errno on a rule that does not deny"),
    "FP021": (ERROR, "redirect target misplaced or missing"),
    "FP022": (ERROR, "redirect mode impossible for an operation"),
    "FP023": (ERROR, "errno tie"),
    "FP024": (ERROR, "userspace mode tie"),
    "FP025": (ERROR, "policy needs a daemon"),
    "FP026": (ERROR, "policy too complex"),
    "FP030": (ERROR, "included file cannot be read"),
    "FP031": (ERROR, "include cycle"),
    "FP032": (ERROR, "header statement in an included file"),
    "FP033": (ERROR, "undefined name"),
    "FP034": (ERROR, "name defined more than once"),
    "FP035": (ERROR, "invalid definition"),
    "FP036": (ERROR, "unknown user or group"),
    "FP037": (ERROR, "malformed id"),
    "FP038": (ERROR, "empty id range"),
    "FP039": (ERROR, "id out of range"),
    "FP040": (ERROR, "more than one by list"),
    "FP101": (WARNING, "rule never decides anything"),
    "FP102": (WARNING, "allow rule under default allow"),
    "FP103": (WARNING, "except removes nothing"),
    "FP104": (WARNING, "duplicate rule"),
    "FP105": (WARNING, "rule matches nothing"),
    "FP106": (WARNING, "hidden names can be replaced"),
    "FP107": (WARNING, "ENOSYS is not delivered as written"),
    "FP108": (WARNING, "definition never used"),
    "FP109": (WARNING, "duplicate subject"),
    "FP110": (WARNING, "rule applies to nobody"),
}


@dataclass(frozen=True, order=True)
class Span:
    """A region of source text: 1-based lines and columns, end exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int

    @staticmethod
    def point(line: int, column: int) -> "Span":
        return Span(line, column, line, column + 1)


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    file: str
    span: Span
    hint: Optional[str] = None
    # Other places worth showing (e.g. the rule an errno ties with): (message, span), or
    # (message, span, file) for a place in another file (an include line, a rule there).
    related: tuple[tuple, ...] = field(default=())

    @property
    def severity(self) -> str:
        return CODES[self.code][0]

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def sort_key(self):
        return (self.file, self.span, self.code, self.message)

    def to_json(self) -> dict:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "file": self.file,
            "line": self.span.line,
            "column": self.span.column,
            "end_line": self.span.end_line,
            "end_column": self.span.end_column,
            "hint": self.hint,
            "related": [
                {"message": r[0], "file": _related_file(self, r), "line": r[1].line,
                 "column": r[1].column} for r in self.related
            ],
        }

    def render(self, source_lines: Optional[list[str]] = None,
               sources: Optional[dict] = None) -> str:
        """`file:line:col: error[FPnnn]: message`, the source line, a caret, a hint.
        `sources` (file -> lines) shows notes that point into other files."""
        out = [f"{self.file}:{self.span.line}:{self.span.column}: "
               f"{self.severity}[{self.code}]: {self.message}"]
        out.extend(_excerpt(source_lines, self.span))
        for r in self.related:
            msg, sp, file = r[0], r[1], _related_file(self, r)
            out.append(f"{file}:{sp.line}:{sp.column}: note: {msg}")
            lines = source_lines if file == self.file else (sources or {}).get(file)
            out.extend(_excerpt(lines, sp))
        if self.hint:
            out.append(f"  = hint: {self.hint}")
        return "\n".join(out)


def _related_file(d: "Diagnostic", related: tuple) -> str:
    return related[2] if len(related) > 2 and related[2] else d.file


# Long lines are cut around the span so a 1 MB line does not flood the terminal.
_EXCERPT_WIDTH = 120


def _excerpt(source_lines: Optional[list[str]], span: Span) -> list[str]:
    if not source_lines or not (1 <= span.line <= len(source_lines)):
        return []
    text = source_lines[span.line - 1].rstrip("\r\n").expandtabs(1)
    start = max(span.column - 1, 0)
    width = 1
    if span.end_line == span.line and span.end_column > span.column:
        width = span.end_column - span.column
    left = 0
    if len(text) > _EXCERPT_WIDTH:
        left = max(0, min(start - 20, len(text) - _EXCERPT_WIDTH))
        text = text[left:left + _EXCERPT_WIDTH]
    caret_at = start - left
    width = max(1, min(width, len(text) - caret_at if len(text) > caret_at else 1))
    gutter = f"{span.line:>4} | "
    return [gutter + text, " " * (len(gutter) + caret_at) + "^" * width]


class PolicyError(FpolError):
    """Raised when a stage cannot continue; carries every diagnostic found so far."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        super().__init__("\n".join(d.render() for d in self.diagnostics))


class Reporter:
    """Collects diagnostics for one source file."""

    def __init__(self, file: str):
        self.file = file
        self.items: list[Diagnostic] = []

    def add(self, code: str, message: str, span: Span, hint: Optional[str] = None,
            related: tuple = (), file: Optional[str] = None) -> None:
        """`file` names another file than the reporter's (a rule from an included file)."""
        assert code in CODES, code
        file = file or self.file
        # A note in the diagnostic's own file stays a (message, span) pair.
        related = tuple(r[:2] if len(r) > 2 and (not r[2] or r[2] == file) else tuple(r)
                        for r in related)
        self.items.append(Diagnostic(code, message, file, span, hint, related))

    def for_file(self, file: str) -> "Reporter":
        """A reporter for another file of the same policy (an include) that adds to the
        same list."""
        other = Reporter(file)
        other.items = self.items
        return other

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.items)

    def sorted(self) -> list[Diagnostic]:
        return sorted(self.items, key=Diagnostic.sort_key)


def render_text(diagnostics: Iterable[Diagnostic], sources: dict[str, list[str]]) -> str:
    return "\n".join(d.render(sources.get(d.file), sources) for d in diagnostics)


def render_json(diagnostics: Iterable[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in diagnostics], indent=2)


def code(text: str) -> str:
    """`text` as a code span of a message, as Markdown writes one: fenced by more
    backticks than any run inside it, and spaced off when it starts or ends with one (so
    the escape \\` reads ``\\` `` and not `\\``)."""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def did_you_mean(word: str, candidates: Iterable[str]) -> Optional[str]:
    """A hint naming the closest candidate, if one is close enough."""
    import difflib

    cands = sorted(set(candidates))
    lowered = {c.lower(): c for c in cands}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f"did you mean `{lowered[word.lower()]}`?"
    match = difflib.get_close_matches(word, cands, n=1, cutoff=0.7)
    if not match:
        match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.7)
        match = [lowered[m] for m in match]
    return f"did you mean `{match[0]}`?" if match else None
