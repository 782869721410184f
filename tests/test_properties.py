"""Property tests of the front end: it never raises, whatever the input, and
`fmt` is idempotent and keeps meaning.

(a) random bytes, (b) random token soups built from the language's own words,
(c) extreme sizes, (d) randomly generated valid policies.
"""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpol.compiler import ops
from fpol.compiler.analyse import ERRNOS
from fpol.compiler.diagnostics import CODES, render_json, render_text
from fpol.compiler.driver import check
from fpol.compiler.fmt import format_policy
from fpol.compiler.parser import keywords, parse

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


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


# Messages that quote the very text their span covers.
_QUOTES_SPAN = {
    "FP001": re.compile(r"unexpected `(?P<w>[^`]*)`(;|$)"),
    "FP003": re.compile(r"unknown operation or group `(?P<w>[^`]*)`"),
    "FP004": re.compile(r"unknown errno `(?P<w>[^`]*)`"),
    "FP005": re.compile(r"unknown \w+ `(?P<w>[^`]*)`"),
    "FP007": re.compile(r"policy name `(?P<w>[^`]*)`"),
    "FP008": re.compile(r"policy name `(?P<w>[^`]*)`"),
    "FP012": re.compile(r"unknown escape `(?P<w>[^`]*)`"),
}


def _assert_span_shows_the_word(lines, d):
    """Columns are right: where a message quotes source text, the span covers it."""
    m = _QUOTES_SPAN.get(d.code) and _QUOTES_SPAN[d.code].match(d.message)
    if not m or m["w"].endswith("...") or d.span.end_line != d.span.line:
        return
    line = lines[d.span.line - 1]
    assert line[d.span.column - 1:d.span.end_column - 1] == m["w"], (d, line)


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


# --- (a) random bytes -------------------------------------------------------------------

@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data):
    assert_sane(data)
    assert_fmt_fixpoint(data)


@SETTINGS
@given(st.text(max_size=300))
def test_random_text_never_raises(text):
    assert_sane(text.encode("utf-8", "surrogatepass"))
    assert_fmt_fixpoint(text.encode("utf-8", "surrogatepass"))


# --- (b) token soups --------------------------------------------------------------------

WORDS = sorted(keywords() | set(ops.SINGLE_OPS) | set(ops.GROUPS) |
               {"userspace", "EPERM", "EACCES", "EROFS", "ENOENT", "EXDEV", "EFOO",
                "v3", "v4", "v5", "enforce", "complain", "case-insensitive", "case-sensitive",
                "media", "x", "Deny", "wrte", "13"})
PATHS = ["/", "/a", "/a/b", "//a//b/", "/a/./b", "/a/../b", "/x-y_z.1+@%~=", "/secret",
         "/" + "n" * 256, "relative", "a/b"]
STRINGS = ['"/a b"', '"/q\\"x"', '"/b\\\\s"', '"/h\\x41\\xff"', '"*.log"', '"/home/*/.ssh/**"',
           '"/{a,b}/c"', '"{a,b"', '"/a/b**"', '""', '"\\q"', '"/a\\x4"', '"/x#y"', '"unterminated',
           '"/caf\u00e9"', '"{' + ",".join(f"n{i}" for i in range(300)) + '}"']
JUNK = [",", ",", " ", "  ", "\t", "\n", "\n", "\r\n", "\\", "\\\n", "#", "# comment\n",
        "  # trailing\n", "*", "?", "{", "}", ";", "!", "\"", "\x00", "\ufeff", "\u2028", "é",
        "\x0c", "\r", "()", "=", "@"]

TOKEN = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(PATHS),
    st.sampled_from(STRINGS),
    st.sampled_from(JUNK),
)


@st.composite
def soups(draw):
    tokens = draw(st.lists(TOKEN, max_size=40))
    out = []
    for tok in tokens:
        out.append(tok)
        out.append(draw(st.sampled_from([" ", " ", "", "\n"])))
    return "".join(out)


@SETTINGS
@given(soups())
def test_token_soup_never_raises(text):
    data = text.encode("utf-8")
    assert_sane(data)
    assert_sane(data, no_daemon=True)
    assert_fmt_fixpoint(data)


@st.composite
def line_soups(draw):
    """Lines that start like statements, so more of them get past the parser."""
    starts = ["deny", "allow", "audit", "redirect", "default", "policy", "abi", "mode", "names",
              "# c", ""]
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        head = draw(st.sampled_from(starts))
        body = draw(st.lists(TOKEN, max_size=8))
        lines.append(" ".join([head] + body))
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines)


@SETTINGS
@given(line_soups())
def test_line_soup_never_raises(text):
    assert_sane(text.encode("utf-8"))
    assert_fmt_fixpoint(text.encode("utf-8"))


# --- (c) extreme sizes ------------------------------------------------------------------

def test_empty_input():
    for data in (b"", "", b"\n", b"\r\n", b" ", b"\\", b" \\\n", b"#", b"\xef\xbb\xbf"):
        result = assert_sane(data)
        assert result.diagnostics == [], data
        assert result.ok
        assert result.policy.rules == ()
        assert assert_fmt_fixpoint(data) == ("#\n" if data == b"#" else ""), data


def test_one_megabyte_line_of_junk():
    data = b"deny write under /x " + b"a" * (1 << 20) + b"\n"
    result = assert_sane(data)
    assert [d.code for d in result.diagnostics] == ["FP001"]


def test_one_megabyte_path():
    data = b"deny write under /" + b"a" * (1 << 20) + b"\n"
    result = assert_sane(data)
    assert [d.code for d in result.diagnostics] == ["FP010"]


def test_one_megabyte_comment():
    data = b"deny write under /x  # " + b"c" * (1 << 20) + b"\n"
    result = assert_sane(data)
    assert result.ok and result.diagnostics == []
    assert len(assert_fmt_fixpoint(data)) > 1 << 20


def test_one_megabyte_of_bad_bytes():
    result = assert_sane(b"\xff" * (1 << 20))
    assert [d.code for d in result.diagnostics].count("FP002") == 5  # capped


def test_many_lines():
    data = "".join(f"deny write under /d{i}\n" for i in range(300))
    result = assert_sane(data)
    assert result.ok and len(result.policy.rules) == 300


def test_many_broken_lines_are_each_reported():
    data = "".join(f"deny write undr /d{i}\n" for i in range(500))
    result = assert_sane(data)
    assert len(result.diagnostics) == 500
    assert [d.span.line for d in result.diagnostics] == list(range(1, 501))


# --- (d) valid policies -----------------------------------------------------------------

NAME = st.text(alphabet="abcdefgh_.-", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
SAFE_ERRNOS = ["EACCES", "EPERM", "EROFS", "ENOENT", "EXDEV", "ENOSPC", "EBUSY"]


@st.composite
def paths(draw):
    comps = draw(st.lists(NAME, min_size=0, max_size=3))
    text = "/" + "/".join(comps)
    if draw(st.booleans()):  # spellings that normalise away
        text = text.replace("/", draw(st.sampled_from(["/", "//"]))) + draw(st.sampled_from(["", "/"]))
    if draw(st.booleans()):
        return '"' + text + '"'
    return text


@st.composite
def quoted_names(draw):
    name = draw(st.text(alphabet="ab*?{},\" \\é", min_size=1, max_size=6))
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def globs(draw):
    comps = draw(st.lists(st.sampled_from(["a", "b", "*", "?x", "**", "{a,b}", "c*d"]),
                          min_size=0, max_size=3))
    return '"/' + "/".join(comps) + '"'


@st.composite
def scopes(draw):
    kind = draw(st.sampled_from(["under", "at", "matching", "named"]))
    if kind in ("under", "at"):
        return f"{kind} {draw(paths())}"
    if kind == "matching":
        return f"matching {draw(globs())}"
    return f"named {draw(quoted_names())}"


@st.composite
def rules(draw):
    action = draw(st.sampled_from(["allow", "deny", "audit", "redirect"]))
    names = list(ops.SINGLE_OPS) + list(ops.GROUPS)
    op_list = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3))
    sep = draw(st.sampled_from([", ", ",", " , "]))
    parts = [action, sep.join(op_list)]
    if action == "redirect":
        parts.append("to userspace")
        parts.append(draw(st.sampled_from(["", "instead", "before", "after"])))
    for s in draw(st.lists(scopes(), max_size=2)):
        parts.append(s)
    if draw(st.booleans()):
        parts.append("except " + ", ".join(draw(st.lists(scopes(), min_size=1, max_size=2))))
    if action == "deny" and draw(st.booleans()):
        parts.append("with " + draw(st.sampled_from(SAFE_ERRNOS)))
    if draw(st.booleans()):  # continue somewhere, maybe with a comment after the `\`
        at = draw(st.integers(1, len(parts)))
        parts.insert(at, draw(st.sampled_from(["\\\n   ", "\\  # c\n   ", "\\\n\\\n"])))
    line = " ".join(p for p in parts if p)
    if draw(st.booleans()):
        line += "  # " + draw(st.text(alphabet="abc #\\\"", max_size=10))
    return line


@st.composite
def policies(draw):
    lines = []
    if draw(st.booleans()):
        lines.append("policy " + draw(st.text(alphabet="abc_019", min_size=1, max_size=8)))
    if draw(st.booleans()):
        lines.append("abi " + draw(st.sampled_from(["v3", "v4"])))
    if draw(st.booleans()):
        lines.append("mode " + draw(st.sampled_from(["enforce", "complain"])))
    if draw(st.booleans()):
        lines.append("names " + draw(st.sampled_from(["case-sensitive", "case-insensitive"])))
    default = draw(st.sampled_from(["", "default allow", "default deny",
                                    "default deny with EPERM", "default redirect to userspace"]))
    if default:
        lines.append(default)
    for _ in range(draw(st.integers(0, 6))):
        lines.append(draw(st.one_of(rules(), st.sampled_from(["", "# a comment", "   "]))))
    lines = draw(st.permutations(lines))
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n"]))


@SETTINGS
@given(policies())
def test_valid_policies_parse_and_fmt_keeps_meaning(text):
    data = text.encode("utf-8")
    tree, _, reporter = parse(data, "p.fpol")
    assert not reporter.has_errors, (text, [d.render() for d in reporter.items])
    result = assert_sane(data)
    once = assert_fmt_fixpoint(data)
    assert once is not None
    formatted = check(once, "p.fpol")
    assert {d.code for d in formatted.diagnostics} == {d.code for d in result.diagnostics}
    if result.ok:
        # the same rules, in the same canonical spelling, with the same decisions
        assert [r.text for r in formatted.policy.rules] == [r.text for r in result.policy.rules]
        assert formatted.policy.default == result.policy.default or \
            formatted.policy.default.decision == result.policy.default.decision
        assert len(formatted.classes.classes) == len(result.classes.classes)


@SETTINGS
@given(policies())
def test_valid_policies_only_have_semantic_diagnostics(text):
    """The generator writes only valid syntax; what check reports is about meaning."""
    result = assert_sane(text.encode("utf-8"))
    syntax = {"FP001", "FP002", "FP012"}
    assert not [d for d in result.diagnostics if d.code in syntax], text


def test_errno_table_is_symbolic():
    assert "EACCES" in ERRNOS and "EPERM" in ERRNOS
    assert all(name.startswith("E") and name.isupper() for name in ERRNOS)
