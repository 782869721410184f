"""`include` and `define` (LANGUAGE.md §7, docs/language.md "Includes and definitions").

The diagnostics themselves are data-driven cases (tests/cases/include_errors.fpol,
define_errors.fpol, clean_include_define.fpol); here: how they render, spelling
equivalence (inline, defined and included forms compile to identical C), `fpol fmt`,
and the examples that share examples/common/credentials.fpol.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from fpol.cli import main
from fpol.compiler.driver import check
from fpol.compiler.evaluate import Evaluator, Request, parse_path
from fpol.compiler.fmt import format_policy
from fpol.compiler.lower import lower
from fpol.compiler.parser import parse
from fpol.compiler.render import render

ROOT = Path(__file__).resolve().parent.parent


def _reader(files: dict[str, str]):
    def read(path: str) -> bytes:
        name = Path(path).name
        if name not in files:
            raise FileNotFoundError(2, "No such file or directory")
        return files[name].encode()
    return read


def _c(text: str, files: dict[str, str] = {}, abi=None) -> tuple[str, str]:
    result = check(text, "same.fpol", origin="/virtual/same.fpol", reader=_reader(files))
    assert result.ok, [(d.file, d.span.line, d.code, d.message) for d in result.diagnostics]
    model = lower(result.classes, abi=abi, source_name="same.fpol")
    return render(model, "struct_ops"), render(model, "check")


# Same rules at the same line numbers (the C names each rule's line in a comment).
EQUIVALENT = [
    ("defined, one value", "deny write under /home/a/.ssh\n\n",
     "deny write under $home/.ssh\ndefine home = /home/a\n", {}),
    ("defined glob", 'deny read matching "/home/*/.cache/**"\n\n',
     'deny read matching "$h/*/.cache/**"\ndefine h = /home\n', {}),
    ("defined in a definition", "deny write under /a/b/c\n\n\n",
     "deny write under $c\ndefine c = $b/c\ndefine b = /a/b\n", {}),
    ("defined quoted", 'deny write under "/a b/c"\n\n', 'deny write under "$x/c"\ndefine x = "/a b"\n', {}),
    ("defined except", "deny write under /a except under /a/t\n\n",
     "deny write under /a except under $t\ndefine t = /a/t\n", {}),
    ("included", "deny write under /a\ndeny read under /b\n",
     'include "inc.fpol"\ndeny read under /b\n', {"inc.fpol": "deny write under /a\n"}),
    ("included, nested and twice", "deny write under /a\ndeny read under /b\n\n",
     'include "one.fpol"\ninclude "two.fpol"\ninclude "two.fpol"\n',
     {"one.fpol": "deny write under /a\n", "two.fpol": '\ndeny read under /b\ninclude "one.fpol"\n'}),
    ("included definition", "deny write under /x/y\n\n",
     'deny write under $d/y\ninclude "defs.fpol"\n', {"defs.fpol": "define d = /x\n"}),
]


@pytest.mark.parametrize("what, inline, other, files", EQUIVALENT, ids=[e[0] for e in EQUIVALENT])
def test_spellings_compile_to_identical_c(what, inline, other, files):
    for abi in ("v4", "v3"):
        assert _c(inline, abi=abi) == _c(other, files, abi=abi), what


_COMMENT = re.compile(r"/\*.*?\*/", re.S)


def test_k_valued_definition_is_k_rules():
    """A rule over a definition with k values stands for k rules: the same automaton as
    the k rules written out (the C differs only in the comments naming rule lines)."""
    inline = "deny write under /a\ndeny write under /b\ndeny write under /c\n"
    defined = "define d = /a, /b, /c\ndeny write under $d\n"
    ra = check(inline, "same.fpol")
    rb = check(defined, "same.fpol")
    assert [r.text for r in ra.policy.rules] == [r.text for r in rb.policy.rules]
    assert {r.line for r in rb.policy.rules} == {2}
    a, b = _c(inline), _c(defined)
    assert _COMMENT.sub("", a[0]) == _COMMENT.sub("", b[0])
    assert _COMMENT.sub("", a[1]) == _COMMENT.sub("", b[1])


def test_two_definitions_make_every_combination():
    result = check("define a = /x, /y\ndefine n = \"*.log\", \"*.tmp\"\n"
                   "deny write under $a named \"$n\"\n", "p.fpol")
    assert result.ok
    assert sorted(r.text for r in result.policy.rules) == sorted(
        f'deny write under {p} named "{n}"' for p in ("/x", "/y") for n in ("*.log", "*.tmp"))


def test_except_over_a_definition_removes_every_value():
    result = check("define t = /a/t, /a/u\ndeny write under /a except under $t\n", "p.fpol")
    assert result.ok and len(result.policy.rules) == 1
    ev = Evaluator(result.policy)
    for path, kind in (("/a/t/f", "allow"), ("/a/u/f", "allow"), ("/a/v/f", "deny")):
        assert ev.evaluate(Request("write", parse_path(path))).kind == kind, path


def test_literal_dollar_is_written_as_an_escape():
    result = check('deny write named "\\x24HOME"\n', "p.fpol")
    assert result.ok and result.policy.rules[0].text == 'deny write named "\\x24HOME"'
    assert Evaluator(result.policy).evaluate(Request("write", parse_path("/d/$HOME"))).kind == "deny"


def test_included_rules_name_their_file():
    result = check('include "inc.fpol"\n', "top.fpol", origin="/v/top.fpol",
                   reader=_reader({"inc.fpol": "\ndeny write under /a\n"}))
    (rule,) = result.policy.rules
    assert (rule.file, rule.line) == ("inc.fpol", 2)


def test_diagnostic_in_include_renders_both_files(tmp_path, capsys):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "x.fpol").write_text("deny wrte under /x\n")
    top = tmp_path / "top.fpol"
    top.write_text("# top\ninclude \"common/x.fpol\"\n")
    assert main(["check", str(top)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{tmp_path}/common/x.fpol:1:6: error[FP003]: unknown operation or group `wrte`"
    assert err[1] == "   1 | deny wrte under /x"
    assert err[3] == f"{top}:2:1: note: included from here"
    assert err[4] == '   2 | include "common/x.fpol"'
    assert main(["check", "--format", "json", str(top)]) == 1
    (d,) = json.loads(capsys.readouterr().out)
    assert d["file"] == f"{tmp_path}/common/x.fpol"
    assert d["related"] == [{"message": "included from here", "file": str(top), "line": 2, "column": 1}]


def test_nested_include_notes_name_every_include_line(tmp_path):
    (tmp_path / "a.fpol").write_text('include "b.fpol"\n')
    (tmp_path / "b.fpol").write_text('\ninclude "c.fpol"\n')
    (tmp_path / "c.fpol").write_text("abi v4\n")
    result = check((tmp_path / "a.fpol").read_bytes(), str(tmp_path / "a.fpol"))
    (d,) = result.diagnostics
    assert d.code == "FP032" and d.file == str(tmp_path / "c.fpol")
    assert [(r[2], r[1].line) for r in d.related] == [(str(tmp_path / "b.fpol"), 2),
                                                      (str(tmp_path / "a.fpol"), 1)]


def test_unreadable_include_is_a_diagnostic_not_a_traceback(tmp_path):
    (tmp_path / "dir.fpol").mkdir()
    top = tmp_path / "t.fpol"
    top.write_text('include "dir.fpol"\ninclude ""\n')
    result = check(top.read_bytes(), str(top))
    assert [d.code for d in result.diagnostics] == ["FP030", "FP030"]


def test_digest_covers_included_files(tmp_path):
    (tmp_path / "i.fpol").write_text("deny write under /a\n")
    top = tmp_path / "t.fpol"
    top.write_text('include "i.fpol"\n')
    first = check(top.read_bytes(), str(top)).digest
    (tmp_path / "i.fpol").write_text("deny write under /b\n")
    assert check(top.read_bytes(), str(top)).digest != first


# --- fmt ----------------------------------------------------------------------------------

FMT = [
    ("include   \"a b.fpol\"\n", 'include "a b.fpol"\n'),
    ("define  home=/home/a,\"/home/b\"\n", "define home = /home/a, /home/b\n"),
    ("define x = /a, /a\n", "define x = /a\n"),
    ("deny   read under   $home//.ssh/\n", "deny read under $home/.ssh\n"),
    ("deny read under \"$home/a b\"\n", 'deny read under "$home/a b"\n'),
    ("deny read matching $home/x\n", 'deny read matching "$home/x"\n'),
    ("deny read named \"\\x24x\"\n", 'deny read named "\\x24x"\n'),
    ("define d = $e/x  # why\n", "define d = $e/x  # why\n"),
    ("deny read named \"${ext}log\"\n", 'deny read named "${ext}log"\n'),
    ("deny read named \"${ext}.log\"\n", 'deny read named "$ext.log"\n'),
    ("deny read under ${d}x\n", "deny read under ${d}x\n"),
]


@pytest.mark.parametrize("text, expected", FMT)
def test_fmt_keeps_includes_and_definitions(text, expected):
    tree, _, reporter = parse(text, "f.fpol")
    assert not reporter.items
    out = format_policy(tree)
    assert out == expected
    again, _, _ = parse(out, "f.fpol")
    assert format_policy(again) == out


# --- the examples -----------------------------------------------------------------------

def test_examples_share_the_credentials_file():
    users = [p for p in sorted((ROOT / "examples").glob("*.fpol"))
             if 'include "common/credentials.fpol"' in p.read_text()]
    assert len(users) >= 2
    for p in users:
        result = check(p.read_bytes(), str(p))
        assert result.ok, [d.message for d in result.diagnostics]
        files = {r.file for r in result.policy.rules}
        assert str(ROOT / "examples" / "common" / "credentials.fpol") in files


def test_case_tables_name_rules_in_included_files():
    from fpol.compiler.cases import parse_cases, run_cases

    result = check('include "inc.fpol"\ndeny read under /b\n', "top.fpol", origin="/v/top.fpol",
                   reader=_reader({"inc.fpol": "\ndeny write under /a with EPERM\n"}))
    ev = Evaluator(result.policy)
    cases = parse_cases("write /a/x -> deny EPERM line inc.fpol:2\n"
                        "write /a/x -> deny EPERM line 2\n"
                        "read /b/x -> deny line 2\n"
                        "read /b/x -> deny line inc.fpol:2\n")
    problems = [r.problem for r in run_cases(result.policy, cases, ev.evaluate)]
    assert problems[0] is None and problems[2] is None
    assert problems[1] == "decided by line inc.fpol:2"
    assert problems[3] == "decided by line 2"


# --- property: any rules, inline or moved into an included file ----------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fpol.compiler.diff import diff  # noqa: E402

from strategies import rules  # noqa: E402


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(rules(), min_size=1, max_size=5), st.data())
def test_moving_rules_into_an_include_changes_nothing(rule_lines, data):
    """The rules from position k on moved into an included file (written where they were):
    the same rules in the same order, equivalent (fpol diff), the same C but for the
    comments naming lines."""
    k = data.draw(st.integers(0, len(rule_lines)))
    inline = "\n".join(rule_lines) + "\n"
    top = "\n".join(rule_lines[:k] + ['include "moved.fpol"']) + "\n"
    moved = "\n".join(rule_lines[k:]) + "\n"
    a = check(inline, "same.fpol")
    b = check(top, "same.fpol", origin="/v/same.fpol", reader=_reader({"moved.fpol": moved}))
    assert a.ok == b.ok
    if not a.ok:
        return
    assert [r.text for r in a.policy.rules] == [r.text for r in b.policy.rules]
    assert diff(a.classes, b.classes).equivalent
    ca = lower(a.classes, source_name="same.fpol")
    cb = lower(b.classes, source_name="same.fpol")
    for which in ("struct_ops", "check"):
        assert _COMMENT.sub("", render(ca, which)) == _COMMENT.sub("", render(cb, which))


def test_special_files_are_not_read(tmp_path):
    os.mkfifo(tmp_path / "fifo.fpol")
    top = tmp_path / "t.fpol"
    top.write_text('include "fifo.fpol"\ninclude "/dev/zero"\ninclude "."\n')
    result = check(top.read_bytes(), str(top))
    assert [(d.code, d.message.split(": ")[-1]) for d in result.diagnostics] == [
        ("FP030", "not a regular file"), ("FP030", "not a regular file"),
        ("FP030", "Is a directory")]


_SCOPE_START = re.compile(r'\b(under|at|matching|named)([ \t]+)(?=["/])(")?')


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(rules(), min_size=1, max_size=5))
def test_an_empty_definition_before_every_path_changes_nothing(rule_lines):
    """`${e}` (defined as "") written at the start of every path and glob, quoted or not, with
    whatever escapes follow it: the same diagnostics' codes, the same rules and C."""
    inline = "\n".join(rule_lines) + "\n"
    defined = _SCOPE_START.sub(lambda m: f"{m[1]}{m[2]}{m[3] or ''}${{e}}", inline) + 'define e = ""\n'
    a = check(inline, "same.fpol")
    b = check(defined, "same.fpol")
    codes_a = sorted(d.code for d in a.diagnostics)
    codes_b = sorted(d.code for d in b.diagnostics if d.code != "FP108")
    assert codes_a == codes_b, (defined, [d.message for d in b.diagnostics])
    if not a.ok:
        return
    assert [r.text for r in a.policy.rules] == [r.text for r in b.policy.rules]
    for which in ("struct_ops", "check"):
        assert render(lower(a.classes, source_name="same.fpol"), which) == \
            render(lower(b.classes, source_name="same.fpol"), which)


def test_shared_example_files_are_canonical_and_check_on_their_own(capsys):
    shared = sorted((ROOT / "examples" / "common").glob("*.fpol"))
    assert shared
    for p in shared:
        assert main(["fmt", "--check", str(p)]) == 0
        assert main(["check", "--strict", str(p)]) == 0
    capsys.readouterr()
