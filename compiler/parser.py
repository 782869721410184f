"""Parser: source bytes -> PolicyFile (the AST), with syntax diagnostics.

The whole file is parsed at once (fast path). If that fails, every logical line
is parsed on its own, so one run reports every broken statement and still builds
the tree of the good ones.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from dataclasses import dataclass
from typing import Optional, cast

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from fpol.grammar import OPTIONS, grammar_text, prebuilt_tables

from . import ast
from .diagnostics import Reporter, Span, code, did_you_mean
from .source import Source, decode, split

_TERMINAL_LABELS = {
    "WORD": "a name",
    "PATH": "a path",
    "STRING": "a quoted string",
    "VARPATH": "a path",  # `$NAME...`: one kind of path to the reader
    "_NL": "end of line",
    "$END": "end of input",
    "COMMA": "`,`",
}


_SUBJECT_KINDS = ("UID", "GID", "USER", "GROUP")


@functools.lru_cache(maxsize=None)
def _lark() -> Lark:
    # The builder runs inside the LALR parser at each reduction, so no parse tree is built
    # and walked again; it sees every token (keywords included) and takes spans from them.
    tables = prebuilt_tables()
    if tables is not None:  # built ahead of time (fpol/grammar): saves building them here
        return Lark._load_from_dict(tables["data"], tables["memo"], transformer=_BUILDER)
    return Lark(grammar_text(), **OPTIONS, transformer=_BUILDER)


def keywords() -> frozenset[str]:
    """Every reserved word of the language."""
    words = set()
    for term in _lark().terminals:
        value = getattr(term.pattern, "value", "")
        if term.pattern.type == "str" and re.fullmatch(r"[a-z]+", value):
            words.add(value)
    return frozenset(words)


def parse(data: "bytes | str", file: str, reporter: Optional[Reporter] = None) -> tuple[ast.PolicyFile, Source, Reporter]:
    """Parse a policy. Never raises on bad input: problems go to the reporter."""
    reporter = reporter or Reporter(file)
    text = decode(data, reporter) if isinstance(data, bytes) else data
    source = split(file, text)
    statements = _parse_statements(source, reporter)
    tree = ast.PolicyFile(file, tuple(statements), source.comments, source.blank_lines,
                          len(source.lines))
    return tree, source, reporter


def _parse_statements(source: Source, reporter: Reporter) -> list[ast.Statement]:
    # Whole file first. Its diagnostics (bad escapes) are kept only if it parses: the
    # per-line pass below would report them again.
    scratch = Reporter(reporter.file)
    try:
        with _building(scratch, 0):
            # The builder's callbacks make the statements (lark's types say a Tree).
            statements = cast("list[ast.Statement]", _lark().parse(source.blanked, start="file"))
    except UnexpectedInput:
        pass
    else:
        reporter.items.extend(scratch.items)
        return statements
    statements = []
    for ll in source.logical:
        text = source.logical_text(ll)
        if text.endswith("\r"):  # the CR of a CRLF line ending: the statement ends here
            text = text[:-1]
        try:
            with _building(reporter, ll.first - 1):
                statements.append(cast(ast.Statement, _lark().parse(text, start="statement")))
        except UnexpectedInput as e:
            _report_syntax(e, ll.first - 1, reporter, text)
    return statements


def _label(name: str) -> str:
    if name in _TERMINAL_LABELS:
        return _TERMINAL_LABELS[name]
    try:
        term = _lark().get_terminal(name)
    except KeyError:
        return name.lower()
    value = getattr(term.pattern, "value", name)
    return f"`{value}`"


_AFTER_SUBJECT_KIND = re.compile(r"(?<![\w.$/-])(uid|gid|user|group)[ \t\f]*$")
_SUBJECT_VALUE = {"uid": "a uid (`N` or `N-M`)", "gid": "a gid (`N` or `N-M`)",
                  "user": "a user name", "group": "a group name"}


def _subject_kind_before(e: UnexpectedInput, text: str) -> Optional[str]:
    """`uid`, `gid`, `user` or `group` when the error is where its value should be."""
    if isinstance(e, UnexpectedCharacters):
        pos = e.pos_in_stream
    else:
        token = getattr(e, "token", None)
        pos = len(text) if token is None or token.type == "$END" else token.start_pos
    if pos is None:
        return None
    m = _AFTER_SUBJECT_KIND.search(text[:pos])
    return m.group(1) if m else None


def _report_syntax(e: UnexpectedInput, line_offset: int, reporter: Reporter,
                   text: str = "") -> None:
    """lark's syntax error as one diagnostic with a hint. (Long because it is a list of
    cases, one per mistake policy authors make, each with its own words.)"""
    line = (e.line if e.line and e.line > 0 else 1) + line_offset
    column = e.column if e.column and e.column > 0 else 1
    hint = None
    if isinstance(e, UnexpectedCharacters):
        ch = e.char
        span = Span.point(line, column)
        if ch == "\ufffd" and any(d.code == "FP002" and d.span == span for d in reporter.items):
            return  # the bad byte is reported already (FP002); once is enough
        if ch == '"':
            message = "unterminated string"
            hint = 'close the string with `"` on the same line'
        elif ch in "*?{}[]":
            message = f"unexpected `{ch}`"
            hint = 'globs go in quotes: `matching "/home/*/.ssh/**"` or `named "*.log"`'
        elif ch == "$" and set(getattr(e, "allowed", None) or ()) <= {"WORD"}:
            message = "unexpected `$`"
            hint = "definitions (`$NAME`) stand for paths only; write the name (or id) itself"
        elif ch == "\\":
            message = "unexpected `\\`"
            hint = "a backslash continues a statement only at the end of a line"
        else:
            message = f"unexpected character {code(ch)}" if ch.isprintable() else \
                f"unexpected character U+{ord(ch):04X}"
        expected = sorted(getattr(e, "allowed", None) or ())
    else:
        token = getattr(e, "token", None)
        expected = sorted(e.expected) if isinstance(e, UnexpectedToken) else []
        if token is None or isinstance(e, UnexpectedEOF) or token.type in ("$END", "_NL"):
            message = "unexpected end of statement"
            if token is not None and token.type == "$END" and token.end_line and token.end_column:
                # Lark places $END on the last token; the statement ends after it.
                span = Span.point(token.end_line + line_offset, token.end_column)
            else:
                span = Span.point(line, column)
        else:
            message = f"unexpected {_describe(token)}"
            end_col = token.end_column if token.end_line == token.line else column + 1
            span = Span(line, column, token.end_line + line_offset if token.end_line else line,
                        end_col or column + 1)
            if token.type == "VARPATH" and set(expected) <= {"WORD"}:
                hint = "definitions (`$NAME`) stand for paths only; write the name (or id) itself"
            if token.type == "WORD":
                keyword_choices = [_label(t).strip("`") for t in expected
                                   if t not in _TERMINAL_LABELS and _label(t).startswith("`")]
                hint = did_you_mean(str(token), keyword_choices)
                if hint is None and ("PATH" in expected or "STRING" in expected):
                    hint = "paths start with `/` (the mount root), or go in double quotes"
    if "BY" in expected:  # a subject in `except` comes after `by`: name only `by`
        expected = [t for t in expected if t not in _SUBJECT_KINDS]
    if hint is None and expected and set(expected) <= set(_SUBJECT_KINDS):
        hint = "a subject is `uid N`, `uid N-M`, `gid N`, `gid N-M`, `user NAME` or " \
            "`group NAME`, e.g. `by user backup`"
    labels = sorted({_label(t) for t in expected if t != "_NL"} | (
        {"end of line"} if "_NL" in expected or "$END" in expected else set()))
    if isinstance(e, UnexpectedCharacters) and e.char == "-" and e.pos_in_stream is not None:
        m = re.search(r"(?<![\w.$/-])(uid|gid)[ \t\f]+([0-9]+)[ \t\f]*$", text[:e.pos_in_stream])
        if m:
            hint = f"a range has no blanks: `{m.group(1)} {m.group(2)}-M`"
    kind = _subject_kind_before(e, text) if text and set(expected) == {"WORD"} else None
    if kind is not None:  # `by uid` with no id, `by uid -1`: say what the value is
        labels = [_SUBJECT_VALUE[kind]]
        if kind in ("uid", "gid"):
            hint = f"write e.g. `{kind} 1000` or `{kind} 1000-1999` (decimal ids, 0 to 4294967294)"
        elif hint is None:
            hint = f"write e.g. `{kind} backup`"
    if labels and len(labels) <= 12:
        message += "; expected " + _join(labels)
    reporter.add("FP001", message, span, hint)


def _describe(token: Token) -> str:
    text = str(token)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"`{text}`"


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]


_ESCAPE = re.compile(r'\\(x[0-9A-Fa-f]{2}|["\\])|\\(x.{0,2}|.)', re.S)


def decode_string(raw: str, span: Span, reporter: Reporter) -> bytes:
    """Decode a quoted path: `\\"`, `\\\\` and `\\xNN` escapes; other text is UTF-8."""
    body = raw[1:-1]
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(body):
        out += body[pos:m.start()].encode("utf-8", "surrogatepass")
        good, bad = m.group(1), m.group(2)
        if good is not None:
            out += bytes([int(good[1:], 16)]) if good[0] == "x" else good.encode()
        else:
            col = span.column + 1 + m.start()
            escape = "\\" + bad
            reporter.add("FP012", f"unknown escape {code(escape)} in string",
                         Span(span.line, col, span.line, col + 1 + len(bad)),
                         'strings know only \\", \\\\ and \\xNN (two hex digits)')
            # Keep the text without the backslash, so one bad escape does not
            # also make the path look empty or different (no follow-on errors).
            out += bad.encode("utf-8", "surrogatepass")
        pos = m.end()
    out += body[pos:].encode("utf-8", "surrogatepass")
    return bytes(out)


class _Builder:
    """Parser callbacks: each grammar rule's children (tokens and what these callbacks made
    of its subrules) -> ast nodes. Line numbers shift by `offset` (for single statements);
    a node's span runs from its first token to its last, keywords included."""

    def __init__(self):
        self.reporter: Optional[Reporter] = None
        self.offset = 0

    # spans ------------------------------------------------------------------
    # lark types a Token's position Optional (a Token made by hand has none); every token
    # of a parse has one.
    def _tok_span(self, tok: Token) -> Span:
        o = self.offset
        return Span(tok.line + o, tok.column, tok.end_line + o, tok.end_column)  # type: ignore[operator, arg-type]

    def _start(self, x) -> tuple[int, int]:
        if isinstance(x, Token):
            return x.line + self.offset, x.column  # type: ignore[operator, return-value]
        return x.span.line, x.span.column

    def _end(self, x) -> tuple[int, int]:
        if isinstance(x, Token):
            return x.end_line + self.offset, x.end_column  # type: ignore[operator, return-value]
        return x.span.end_line, x.span.end_column

    def _span(self, ch: list) -> Span:
        return Span(*self._start(ch[0]), *self._end(ch[-1]))

    def _word(self, tok: Token) -> ast.Word:
        return ast.Word(str(tok), self._tok_span(tok))

    # rules --------------------------------------------------------------------
    def file(self, ch):
        return [c for c in ch if not isinstance(c, Token)]

    def _header(self, keyword, ch):
        return ast.Header(keyword, self._word(ch[1]), self._span(ch))

    def policy_stmt(self, ch):
        return self._header("policy", ch)

    def abi_stmt(self, ch):
        return self._header("abi", ch)

    def mode_stmt(self, ch):
        return self._header("mode", ch)

    def names_stmt(self, ch):
        return self._header("names", ch)

    def include_stmt(self, ch):  # "include" path
        return ast.Include(ch[1], self._span(ch))

    def define_stmt(self, ch):  # "define" WORD "=" path ("," path)*
        values = tuple(ch[3::2])  # the paths, not the commas
        return ast.Define(self._word(ch[1]), values, self._span(ch))

    def default_allow(self, ch):
        return ast.Default(self._word(ch[1]), None, None, self._span(ch))

    def default_deny(self, ch):
        errno = ch[2] if len(ch) > 2 else None
        return ast.Default(self._word(ch[1]), errno, None, self._span(ch))

    def default_redirect(self, ch):
        target = ch[2] if len(ch) > 2 else None
        return ast.Default(self._word(ch[1]), None, target, self._span(ch))

    def action(self, ch):
        return self._word(ch[0])

    def target(self, ch):  # "to" "userspace" [mode]
        return ast.Target(str(ch[2]) if len(ch) > 2 else None, self._span(ch))

    def errno_clause(self, ch):  # "with" WORD
        return self._word(ch[1])

    def path(self, ch):
        tok = ch[0]
        span = self._tok_span(tok)
        raw = str(tok)
        if tok.type == "STRING":
            assert self.reporter is not None  # set while building
            return ast.PathLit(raw, decode_string(raw, span, self.reporter), True, span)
        return ast.PathLit(raw, raw.encode(), False, span)

    def _scope(self, kind, ch):  # KEYWORD path
        return ast.Scope(kind, ch[1], self._span(ch))

    def under(self, ch):
        return self._scope("under", ch)

    def at(self, ch):
        return self._scope("at", ch)

    def matching(self, ch):
        return self._scope("matching", ch)

    def named(self, ch):
        return self._scope("named", ch)

    def subject(self, ch):  # (UID | GID | USER | GROUP) WORD
        return ast.SubjectItem(str(ch[0]), self._word(ch[1]), self._span(ch))

    def by_clause(self, ch):  # "by" subject ("," subject)*
        return ast.By(tuple(c for c in ch if isinstance(c, ast.SubjectItem)), self._span(ch))

    def except_by(self, ch):  # "by" subject, inside `except`
        return _ExceptBy(ch[1], self._span(ch))

    def except_clause(self, ch):  # "except" item ("," item)*: scopes and `by` subjects
        scopes, subjects = [], []
        after_by = False  # `except by uid 0, uid 5`: a subject may follow a `by` item
        for c in ch:
            if isinstance(c, ast.Scope):
                scopes.append(c)
                after_by = False
            elif isinstance(c, _ExceptBy):
                subjects.append(c.item)
                after_by = True
            elif isinstance(c, ast.SubjectItem):
                if not after_by and self.reporter is not None:
                    self.reporter.add("FP001", f"`{c.text}` in `except` needs `by`", c.span,
                                      f"write `except by {c.text}` (a scope item may come "
                                      "before or after it)")
                subjects.append(c)
        return _ExceptClause(tuple(scopes), tuple(subjects), self._span(ch))

    def rule(self, ch):  # action WORD ("," WORD)*, then the clauses (none a token)
        end = 1
        while end < len(ch) and isinstance(ch[end], Token):
            end += 1
        action, ops, rest = ch[0], tuple(map(self._word, ch[1:end:2])), ch[end:]
        target = None
        scopes, excepts, errnos, subjects = [], [], [], []
        except_subjects: list[ast.SubjectItem] = []
        for item in rest:
            if isinstance(item, ast.Target):
                target = item
            elif isinstance(item, ast.Scope):
                scopes.append(item)
            elif isinstance(item, _ExceptClause):
                if item.scopes:
                    excepts.append(item.scopes)
                except_subjects.extend(item.subjects)
            elif isinstance(item, ast.By):
                subjects.append(item)
            elif isinstance(item, ast.Word):
                errnos.append(item)
        return ast.Rule(action, ops, target, tuple(scopes), tuple(excepts), tuple(errnos),
                        self._span(ch), tuple(subjects), tuple(except_subjects))


@dataclass(frozen=True)
class _ExceptBy:
    item: ast.SubjectItem
    span: Span


@dataclass(frozen=True)
class _ExceptClause:
    scopes: tuple[ast.Scope, ...]
    subjects: tuple[ast.SubjectItem, ...]
    span: Span


_BUILDER = _Builder()
_BUILD_LOCK = threading.Lock()  # one builder, so one parse at a time


@contextlib.contextmanager
def _building(reporter: Reporter, offset: int):
    with _BUILD_LOCK:
        _BUILDER.reporter, _BUILDER.offset = reporter, offset
        try:
            yield
        finally:
            _BUILDER.reporter = None
