"""Property tests of the front end: it never raises, whatever the input, and
`fmt` is idempotent and keeps meaning.

(a) random bytes, (b) random token soups built from the language's own words,
(c) extreme sizes, (d) randomly generated valid policies.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpol.compiler import ops
from fpol.compiler.analyse import ERRNOS
from fpol.compiler.driver import check
from fpol.compiler.parser import keywords, parse

from oracles import assert_fmt_fixpoint, assert_sane
from strategies import policies

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


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
