"""Parser: source bytes -> PolicyFile (the AST), with syntax diagnostics.

The whole file is parsed at once (fast path). If that fails, every logical line
is parsed on its own, so one run reports every broken statement and still builds
the tree of the good ones.
"""

from __future__ import annotations

import functools
import re
from typing import Optional

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from fpol.grammar import grammar_text

from . import ast
from .diagnostics import Reporter, Span, did_you_mean
from .source import Source, decode, split

_TERMINAL_LABELS = {
    "WORD": "a name",
    "PATH": "a path",
    "STRING": "a quoted string",
    "_NL": "end of line",
    "$END": "end of input",
    "COMMA": "`,`",
}


@functools.lru_cache(maxsize=None)
def _lark() -> Lark:
    return Lark(grammar_text(), start=["file", "statement"], parser="lalr",
                propagate_positions=True, maybe_placeholders=False)


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
    try:
        tree = _lark().parse(source.blanked, start="file")
    except UnexpectedInput:
        pass
    else:
        builder = _Builder(reporter, 0)
        return [builder.transform(child) for child in tree.children]
    statements = []
    for ll in source.logical:
        text = source.logical_text(ll)
        if text.endswith("\r"):  # the CR of a CRLF line ending: the statement ends here
            text = text[:-1]
        try:
            tree = _lark().parse(text, start="statement")
        except UnexpectedInput as e:
            _report_syntax(e, ll.first - 1, reporter)
            continue
        statements.append(_Builder(reporter, ll.first - 1).transform(tree))
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


def _report_syntax(e: UnexpectedInput, line_offset: int, reporter: Reporter) -> None:
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
        elif ch == "\\":
            message = "unexpected `\\`"
            hint = "a backslash continues a statement only at the end of a line"
        else:
            message = f"unexpected character `{ch}`" if ch.isprintable() else \
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
            if token.type == "WORD":
                keyword_choices = [_label(t).strip("`") for t in expected
                                   if t not in _TERMINAL_LABELS and _label(t).startswith("`")]
                hint = did_you_mean(str(token), keyword_choices)
                if hint is None and ("PATH" in expected or "STRING" in expected):
                    hint = "paths start with `/` (the mount root), or go in double quotes"
    labels = sorted({_label(t) for t in expected if t != "_NL"} | (
        {"end of line"} if "_NL" in expected or "$END" in expected else set()))
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


def _span_of(meta_or_token, offset: int) -> Span:
    return Span(meta_or_token.line + offset, meta_or_token.column,
                meta_or_token.end_line + offset, meta_or_token.end_column)


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
            reporter.add("FP012", f"unknown escape `\\{bad}` in string",
                         Span(span.line, col, span.line, col + 1 + len(bad)),
                         'strings know only \\", \\\\ and \\xNN (two hex digits)')
            # Keep the text without the backslash, so one bad escape does not
            # also make the path look empty or different (no follow-on errors).
            out += bad.encode("utf-8", "surrogatepass")
        pos = m.end()
    out += body[pos:].encode("utf-8", "surrogatepass")
    return bytes(out)


class _Builder:
    """Lark tree -> ast nodes, shifting line numbers by `offset`. A plain recursive walk:
    lark's Transformer with v_args wraps every method call, which dominates large files."""

    def __init__(self, reporter: Reporter, offset: int):
        self.reporter = reporter
        self.offset = offset

    def transform(self, tree):
        if isinstance(tree, Token):
            return tree
        children = [self.transform(child) for child in tree.children]
        return getattr(self, tree.data)(tree.meta, children)

    def _span(self, x) -> Span:
        return _span_of(x, self.offset)

    def _word(self, tok: Token) -> ast.Word:
        return ast.Word(str(tok), self._span(tok))

    def policy_stmt(self, meta, ch):
        return ast.Header("policy", self._word(ch[0]), self._span(meta))

    def abi_stmt(self, meta, ch):
        return ast.Header("abi", self._word(ch[0]), self._span(meta))

    def mode_stmt(self, meta, ch):
        return ast.Header("mode", self._word(ch[0]), self._span(meta))

    def names_stmt(self, meta, ch):
        return ast.Header("names", self._word(ch[0]), self._span(meta))

    def default_allow(self, meta, ch):
        return ast.Default(self._word(ch[0]), None, None, self._span(meta))

    def default_deny(self, meta, ch):
        errno = ch[1] if len(ch) > 1 else None
        return ast.Default(self._word(ch[0]), errno, None, self._span(meta))

    def default_redirect(self, meta, ch):
        target = ch[1] if len(ch) > 1 else None
        return ast.Default(self._word(ch[0]), None, target, self._span(meta))

    def action(self, meta, ch):
        return self._word(ch[0])

    def op(self, meta, ch):
        return self._word(ch[0])

    def oplist(self, meta, ch):
        return tuple(ch)

    def target(self, meta, ch):
        return ast.Target(str(ch[0]) if ch else None, self._span(meta))

    def errno_clause(self, meta, ch):
        return self._word(ch[0])

    def path(self, meta, ch):
        tok = ch[0]
        span = self._span(tok)
        raw = str(tok)
        if tok.type == "STRING":
            return ast.PathLit(raw, decode_string(raw, span, self.reporter), True, span)
        return ast.PathLit(raw, raw.encode(), False, span)

    def _scope(self, kind, meta, ch):
        return ast.Scope(kind, ch[0], self._span(meta))

    def under(self, meta, ch):
        return self._scope("under", meta, ch)

    def at(self, meta, ch):
        return self._scope("at", meta, ch)

    def matching(self, meta, ch):
        return self._scope("matching", meta, ch)

    def named(self, meta, ch):
        return self._scope("named", meta, ch)

    def except_clause(self, meta, ch):
        return ("except", tuple(ch))

    def rule(self, meta, ch):
        action, ops, *rest = ch
        target = None
        scopes, excepts, errnos = [], [], []
        for item in rest:
            if isinstance(item, ast.Target):
                target = item
            elif isinstance(item, ast.Scope):
                scopes.append(item)
            elif isinstance(item, tuple) and item and item[0] == "except":
                excepts.append(item[1])
            elif isinstance(item, ast.Word):
                errnos.append(item)
        return ast.Rule(action, ops, target, tuple(scopes), tuple(excepts), tuple(errnos),
                        self._span(meta))
