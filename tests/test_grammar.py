"""The LALR tables shipped with the grammar (fpol/grammar/fpol.tables.json) are current,
and the parser loaded from them parses, and fails, as the one lark builds from the grammar
(lark numbers the states differently from run to run, so the tables are compared by what
they do)."""

from __future__ import annotations

import random
from pathlib import Path

import lark
from lark import Lark
from lark.exceptions import UnexpectedInput

import fpol.grammar as grammar
from fpol.compiler import parser
from fpol.compiler.diagnostics import Reporter

ROOT = Path(__file__).resolve().parent.parent


def test_tables_are_current():
    """The shipped tables are this grammar's; under another lark than the one that wrote
    them (a newer release on a fresh machine) they are not used, and the parser is built."""
    shipped = grammar.shipped_tables()
    assert shipped is not None, "fpol.tables.json is missing: run `python3 -m fpol.grammar`"
    if shipped["lark"] == lark.__version__:
        assert grammar.prebuilt_tables() is not None, \
            "the grammar or the parser options changed: run `python3 -m fpol.grammar`"
        assert parser._lark().source_path == "<deserialized>"  # loaded, not built
    else:
        assert grammar.prebuilt_tables() is None
        assert parser._lark().source_path != "<deserialized>"


def test_stale_tables_are_not_used(monkeypatch):
    """Tables whose key is not this grammar's (edited since they were written) are ignored."""
    stale = dict(grammar.shipped_tables() or {}, key="0" * 64)
    monkeypatch.setattr(grammar, "shipped_tables", lambda: stale)
    assert grammar.prebuilt_tables() is None


def _terminal(t):
    # lark serialises a pattern's flags (a frozenset) as a list, in its own cache too
    return t.name, type(t.pattern).__name__, t.pattern.value, sorted(t.pattern.flags), t.priority


def _outcome(lark: Lark, text: str, start: str):
    try:
        with parser._building(Reporter("x"), 0):
            return repr(lark.parse(text, start=start))
    except UnexpectedInput as e:
        expected = getattr(e, "expected", None) or getattr(e, "allowed", None) or ()
        return type(e).__name__, e.line, e.column, sorted(expected)


def test_loaded_parser_is_the_built_one():
    loaded = parser._lark()
    built = Lark(grammar.grammar_text(), **grammar.OPTIONS, transformer=parser._BUILDER)
    assert [_terminal(t) for t in loaded.terminals] == [_terminal(t) for t in built.terminals]
    lines = [line for f in sorted((ROOT / "examples").glob("*.fpol"))
             for line in f.read_text().splitlines() if line.strip() and not line.startswith("#")]
    words = ["allow", "deny", "under", "at", "named", "except", "by", "uid", "with", "to",
             "userspace", "after", ",", "=", "/a", '"b"', "$X", "define", "include", "mode"]
    rng = random.Random(13)
    texts = list(lines)
    for _ in range(500):
        tokens = rng.choice(lines).split(" ")
        tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(words))
        del tokens[rng.randrange(len(tokens))]
        texts.append(" ".join(tokens))
    for text in texts:
        assert _outcome(loaded, text, "statement") == _outcome(built, text, "statement"), text
    whole = "\n".join(lines) + "\n"
    assert _outcome(loaded, whole, "file") == _outcome(built, whole, "file")
