"""What the property and fuzz tests hold every result to: one copy, shared.

Front end: `check` returns well-formed diagnostics that render (`assert_sane`), spans lie
inside the input (`assert_spans_inside`), and `fmt` is a fixpoint that keeps the
diagnostic codes (`assert_fmt_fixpoint`). Back end: the kernel engine decides what the
reference evaluator decides, or more strictly only where the fuse-bpf realisation says so
(`agree`, docs/realisation.md). Used by tests/test_properties.py, tests/test_kernel.py,
tests/test_fuzz.py and the atheris harnesses in fuzz/.
"""

from __future__ import annotations

import json
import re

from fpol.compiler import ops
from fpol.compiler.diagnostics import CODES, render_json, render_text
from fpol.compiler.driver import check
from fpol.compiler.fmt import format_policy
from fpol.compiler.parser import parse

# --- the front end ------------------------------------------------------------------------


def _lines_of(data: "bytes | str") -> int:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text.count("\n") + 1


def assert_sane(data: "bytes | str", no_daemon: bool = False):
    """check() returns (never raises) well-formed diagnostics that render."""
    result = check(data, "p.fpol", no_daemon=no_daemon)
    n_lines = _lines_of(data)
    for d in result.diagnostics:
        assert d.code in CODES
        assert d.message and "\n" not in d.message
        assert 1 <= d.span.line <= n_lines, d
        assert d.span.column >= 1
        assert (d.span.end_line, d.span.end_column) > (d.span.line, d.span.column) or \
            (d.span.end_line, d.span.end_column) == (d.span.line, d.span.column), d
    for d in result.diagnostics:
        _assert_span_shows_the_word(result.source.lines, d)
    render_text(result.diagnostics, {"p.fpol": list(result.source.lines)})
    json.loads(render_json(result.diagnostics))
    assert result.ok == (result.policy is not None)
    return result


def assert_spans_inside(result) -> None:
    """Every diagnostic (and every related note) points at file:line:col inside the
    input: its line exists, its columns are within that line (one past its end at most,
    where a point marks the end of a line), and it does not end before it starts."""
    lines = result.source.lines

    def inside(line: int, column: int, what, slack: int = 1) -> None:
        assert 1 <= line <= len(lines), (what, len(lines))
        assert 1 <= column <= len(lines[line - 1]) + slack, (what, lines[line - 1])

    for d in result.diagnostics:
        for span in [d.span] + [sp for _, sp in d.related]:
            inside(span.line, span.column, d)
            # A one-character point just past the end of a line ("here a word is missing")
            # ends one further.
            point_at_end = span.end_line == span.line and span.end_column == span.column + 1
            inside(span.end_line, span.end_column, d, 2 if point_at_end else 1)
            assert (span.end_line, span.end_column) >= (span.line, span.column), d
        assert d.render().startswith(f"p.fpol:{d.span.line}:{d.span.column}: "), d.render()


# Messages that quote the very text their span covers. The quoted text may hold a backtick
# itself: FP012 quotes it as Markdown does (diagnostics.code: ``\x`Z``), the others run
# each pattern to what follows the quote.
_QUOTES_SPAN = {
    "FP001": re.compile(r"unexpected `(?P<w>.*?)`(;|$)"),
    "FP003": re.compile(r"unknown operation or group `(?P<w>.*)`$"),
    "FP004": re.compile(r"unknown errno `(?P<w>.*)`$"),
    "FP005": re.compile(r"unknown \w+ `(?P<w>.*)`$"),
    "FP007": re.compile(r"policy name `(?P<w>.*)` may use "),
    "FP008": re.compile(r"policy name `(?P<w>.*)` has \d+ characters"),
    "FP012": re.compile(r"unknown escape (?P<f>`+)(?P<w>.*?)(?P=f) in string$"),
}


def _assert_span_shows_the_word(lines, d):
    """Columns are right: where a message quotes source text, the span covers it."""
    m = _QUOTES_SPAN.get(d.code) and _QUOTES_SPAN[d.code].match(d.message)
    if not m or m["w"].endswith("...") or d.span.end_line != d.span.line:
        return
    quoted = m["w"]
    if "f" in m.groupdict() and len(quoted) > 2 and quoted[0] == quoted[-1] == " " \
            and quoted.strip(" "):  # a Markdown code span's padding
        quoted = quoted[1:-1]
    line = lines[d.span.line - 1]
    assert line[d.span.column - 1:d.span.end_column - 1] == quoted, (d, line)


def assert_fmt_fixpoint(data: "bytes | str") -> "str | None":
    """If `data` parses without errors, its canonical text parses without errors,
    formats to itself, and checks with the same diagnostic codes."""
    tree, _, reporter = parse(data, "p.fpol")
    if reporter.has_errors:
        return None
    once = format_policy(tree)
    tree2, _, reporter2 = parse(once, "p.fpol")
    assert not reporter2.has_errors, (once, [d.render() for d in reporter2.items])
    assert format_policy(tree2) == once
    # The same codes (as a set: fmt writes a repeated scope once, so an error in
    # it is then reported once).
    before = {d.code for d in check(data, "p.fpol").diagnostics}
    after = {d.code for d in check(once, "p.fpol").diagnostics}
    assert before == after, once
    return once


# --- the kernel engine against the evaluator -------------------------------------------------

# Ops where the realisation may refuse what the evaluator allows (docs/realisation.md).
STRICTER_OPS = {"rename", "link", "copy_file_range", "create", "mknod", "mkdir", "symlink"}
RANK = {"allow": 0, "userspace": 1, "deny": 2}


def engine_for(checked):
    from fpol.runtime.engine import CheckEngine
    from fpol.runtime.objects import build

    return CheckEngine(build(checked, "check"))


def agree(expected, got) -> str:
    """`same`, or `stricter` (allowed only for documented realisation refusals)."""
    a, b = expected.decision, got.decision
    if (a.kind, a.errno, a.mode if a.kind == "userspace" else None, a.audit) == \
            (b.kind, b.errno, b.mode if b.kind == "userspace" else None, b.audit):
        return "same"
    if got.note and expected.request.op in STRICTER_OPS and (
            RANK[b.kind] >= RANK[a.kind] or b.complained):
        return "stricter"
    return "DIFFERENT"


# --- the class tree against the evaluator -----------------------------------------------------

def decision_fields(d) -> tuple:
    return (d.kind, d.errno, d.mode, d.audit, d.rules)


def requesters(tree, limit: int = 64) -> list[tuple[int, int]]:
    """(uid, gid) pairs to judge with: each subject class's own requester, and the first
    and last ids of the interval cells the policy cuts the id space into (where an
    off-by-one in a range would show), at most `limit`."""
    part = tree.subjects
    out = [(c.uid, c.gid) for c in part.classes]
    for ui in range(len(part.uid_starts)):
        for gi in range(len(part.gid_starts)):
            for uid in part.interval("uid", ui):
                for gid in part.interval("gid", gi):
                    if len(out) >= limit:
                        return sorted(set(out))
                    out.append((uid, gid))
    return sorted(set(out))


def assert_classes_agree(checked, evaluator, path: tuple) -> None:
    """At `path`, the class the tree reaches decides every atom as the evaluator does, for
    every requester the policy tells apart."""
    from fpol.compiler.decide import decide

    tree = checked.classes
    cls = tree.classify(path)
    # Evaluator.decision_at(path, atom, uid, gid), with the path walked once, not once per
    # requester and atom (the walk is most of the cost).
    held = evaluator.matching(evaluator.walk(path))
    for uid, gid in requesters(tree):
        subject = tree.subjects.classify(uid, gid)
        rules = [r for r in held if r.applies_to(uid, gid)]
        for atom in ops.ATOMS:
            got = cls.decision(atom, subject)
            want = decide(evaluator.policy, atom, rules)
            assert decision_fields(got) == decision_fields(want), (
                f"{atom} at {path} by uid {uid} gid {gid}: class {cls.id} subject {subject} "
                f"says {got.short()} (rules {got.rules}), "
                f"evaluator says {want.short()} (rules {want.rules})")


# --- the generated C ----------------------------------------------------------------------------

_SOURCE_LINE = re.compile(r"(\.fpol):\d+")


def c_without_line_numbers(text: str) -> str:
    """Generated C with the policy line numbers in its comments masked: two spellings of a
    policy whose statements sit on different lines then give the same text."""
    return _SOURCE_LINE.sub(r"\1:N", text)
