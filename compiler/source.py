"""Source text: decoding, comments, and logical lines.

The first stage of the pipeline. It turns raw bytes into text the parser can take:
invalid UTF-8 and NUL bytes are reported (FP002) and replaced so that later
stages still find the other errors; comments are cut out (kept for `fpol fmt`) and
blanked so columns stay right; physical lines are grouped into logical lines,
a trailing backslash joining the next line.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ast import Comment
from .diagnostics import Reporter, Span

# Only the first few encoding errors are worth reporting; junk files have thousands.
_MAX_ENCODING_ERRORS = 5


@dataclass(frozen=True)
class LogicalLine:
    first: int  # 1-based physical line numbers, inclusive
    last: int


@dataclass(frozen=True)
class Source:
    file: str
    text: str  # decoded text, as the user sees it (for excerpts)
    blanked: str  # the same text with comments replaced by blanks
    lines: tuple[str, ...]  # physical lines of `text`
    logical: tuple[LogicalLine, ...]
    comments: tuple[Comment, ...]
    blank_lines: frozenset[int]

    def logical_text(self, ll: LogicalLine) -> str:
        blank_lines = self.blanked.split("\n")
        return "\n".join(blank_lines[ll.first - 1:ll.last])


def decode(data: bytes, reporter: Reporter) -> str:
    """UTF-8 text from bytes; bad bytes and NULs are reported and replaced."""
    reported = 0
    # A UTF-8 byte order mark is harmless; editors do not count it as a column,
    # so it goes before any position is worked out.
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pieces: list[str] = []
        pos = 0
        while True:
            if reported >= _MAX_ENCODING_ERRORS:
                # Nothing more to report: let the codec replace the rest in one go
                # (same U+FFFD per bad sequence), not one slice per bad byte.
                pieces.append(data[pos:].decode("utf-8", "replace"))
                break
            try:
                pieces.append(data[pos:].decode("utf-8"))
                break
            except UnicodeDecodeError as e:
                good = data[pos:pos + e.start].decode("utf-8")
                pieces.append(good)
                bad_at = pos + e.start
                if reported < _MAX_ENCODING_ERRORS:
                    line, col = _position("".join(pieces))
                    reporter.add("FP002", f"invalid UTF-8 byte 0x{data[bad_at]:02x}",
                                 Span.point(line, col),
                                 "policies are UTF-8 text; write other bytes in a quoted path as \\xNN")
                    reported += 1
                pieces.append("\ufffd")
                pos = pos + e.end
        text = "".join(pieces)
    if "\0" in text:
        idx = text.index("\0")
        line, col = _position(text[:idx])
        reporter.add("FP002", "NUL byte in policy source", Span.point(line, col),
                     "is this a binary file? policies are UTF-8 text")
        text = text.replace("\0", " ")
    return text


def _position(prefix: str) -> tuple[int, int]:
    line = prefix.count("\n") + 1
    col = len(prefix) - (prefix.rfind("\n") + 1) + 1
    return line, col


def split(file: str, text: str) -> Source:
    """Find comments and logical lines; blank the comments out."""
    physical = text.split("\n")
    blanked: list[str] = []
    comments: list[Comment] = []
    logical: list[LogicalLine] = []
    blank_lines: set[int] = set()
    start = None  # first line of the logical line being collected
    for number, line in enumerate(physical, start=1):
        code, comment_col = _cut_comment(line)
        code_part = code.rstrip(" \t\f\r")
        has_code = bool(code_part.strip())
        if comment_col is not None:
            comments.append(Comment(line[comment_col:].rstrip(), number, comment_col + 1,
                                    trailing=has_code or start is not None))
            blanked.append(code + " " * (len(line) - len(code)))
        else:
            blanked.append(line)
        continues = code_part.endswith("\\")
        if has_code and start is None:
            start = number
        if start is None:
            if comment_col is None and not line.strip():
                blank_lines.add(number)
            continue
        if not continues:
            logical.append(LogicalLine(start, number))
            start = None
    if start is not None:
        logical.append(LogicalLine(start, len(physical)))
        if continues:  # a backslash on the very last line continues into nothing
            at = len(code_part) - 1
            blanked[-1] = blanked[-1][:at] + " " + blanked[-1][at + 1:]
    return Source(file, text, "\n".join(blanked), tuple(physical), tuple(logical),
                  tuple(comments), frozenset(blank_lines))


def _cut_comment(line: str) -> tuple[str, "int | None"]:
    """The code part of a line and the column where its comment starts (or None)."""
    if "#" not in line:  # most lines: no need to look at each character
        return line, None
    in_string = False
    escaped = False
    for i, ch in enumerate(line):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "#":
            return line[:i], i
    return line, None
