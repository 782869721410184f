"""The language server's language side never fails on any text an editor may send.

Every text the fuzzing strategies make (valid policies, mutated ones, arbitrary unicode with
lone surrogates, NULs and every kind of line end) goes through what the server does on each
keystroke and request: the check and its diagnostics, hover, completion and go to
definition at every position, formatting and quick fixes. None may raise, every range must
lie inside the document, formatting must be a fixpoint, and a quick fix must only replace
the word it names.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpol.lsp import Document, completions, definition, formatted, hover, quick_fixes

from strategies import EDIT_PIECES, mutated, policies

SCALE = max(1, int(os.environ.get("FPOL_FUZZ_SCALE", "1")))
RUNS = settings(max_examples=150 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

texts = st.one_of(
    policies(),
    mutated(),
    st.text(max_size=200),
    st.lists(st.sampled_from(EDIT_PIECES), max_size=30).map("".join),
)


def _inside(doc: Document, pos: tuple[int, int]) -> bool:
    line, col = pos
    return 0 <= line < len(doc.lines) and 0 <= col <= len(doc.lines[line])


def _exercise(text: str) -> Document:
    doc = Document(text, "/tmp/fuzzed.fpol")
    for p in doc.problems:
        assert _inside(doc, p.start) and _inside(doc, p.end) and p.start <= p.end, p
        for _, a, b in p.related:
            assert _inside(doc, a) and _inside(doc, b)
        assert p.code.startswith("FP") and p.severity in ("error", "warning")
    # Every position of short documents, the line ends and one past them too.
    for line, content in enumerate(doc.lines[:12]):
        for col in range(0, min(len(content), 80) + 2):
            h = hover(doc, line, col)
            assert h is None or isinstance(h, str) and h
            for item in completions(doc, line, col):
                assert item.label and item.kind
            found = definition(doc, line, col)
            assert found is None or isinstance(found[0], str)
    hover(doc, len(doc.lines) + 3, 0)
    completions(doc, -1, 5)
    out = formatted(doc)
    if out is not None:
        assert formatted(Document(out, doc.path)) == out, "fmt is not a fixpoint"
    for p in quick_fixes(doc, (0, 0), (len(doc.lines), 0)):
        assert p.fix and p.start[0] == p.end[0]
        old = doc.lines[p.start[0]][p.start[1]:p.end[1]]
        assert old and old != p.fix
    return doc


@RUNS
@given(texts)
def test_never_fails_on_any_text(text):
    _exercise(text)


def test_known_awkward_texts():
    for text in ("", "\n", "\r\n\r\n", "\\", "deny", "deny read,", 'deny read under "',
                 "\ufeffdeny read", "deny read under /a\0", "deny \udcff under /a",
                 "deny read with", "redirect read to", "abi", "default deny with EPRM",
                 "deny read under /a \\\n \\\n", "\u2028deny\u2029read", "$", "include",
                 "define X = /a\ndeny read under $X", "😀" * 50 + "\n" + "deny wirte"):
        doc = _exercise(text)
        assert isinstance(doc.problems, list)
    # The fix of a did-you-mean lands on the misspelt word.
    doc = _exercise("deny wirte under /a with EPRM\n")
    assert sorted((p.fix, p.start, p.end) for p in doc.problems if p.fix) == \
        [("EPERM", (0, 25), (0, 29)), ("write", (0, 5), (0, 10))]
