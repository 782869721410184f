"""`fpol fmt`: the canonical form, comments kept, idempotence, and the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from casefile import case_paths, parse_case
from fpol.cli import main
from fpol.compiler.driver import check
from fpol.compiler.fmt import format_policy
from fpol.compiler.parser import parse

ROOT = Path(__file__).resolve().parent.parent


def fmt(text: "str | bytes") -> str:
    tree, _, reporter = parse(text, "t.fpol")
    assert not reporter.has_errors, [d.render() for d in reporter.sorted()]
    return format_policy(tree)


# (id, input, canonical output)
EXAMPLES = [
    ("empty", "", ""),
    ("only_blank_lines", "\n\n   \n\t\n", ""),
    ("canonical_stays", "deny write under /secret\n", "deny write under /secret\n"),
    ("spaces_collapse", "  deny   write   under    /secret   \n", "deny write under /secret\n"),
    ("tabs_and_form_feeds", "\tdeny\twrite\f under /x\n", "deny write under /x\n"),
    ("final_newline_added", "deny write under /x", "deny write under /x\n"),
    ("op_order_and_repeats", "deny write,read ,read, exec under /x\n",
     "deny read, write, exec under /x\n"),
    ("op_order_groups_and_ops", "deny mkdir, create, lookup, all under /x\n",
     # groups in table order first (`create` is both a group and an op), then ops
     "deny create, all, lookup, mkdir under /x\n"),
    ("scope_order", 'deny read named "a" matching "/m/*" at /a under /u\n',
     'deny read under /u at /a matching "/m/*" named "a"\n'),
    ("repeated_scope_once", "deny read under /u under /u/\n", "deny read under /u\n"),
    ("one_except_list", "deny write under /d except named \"*.t\" except under /d/tmp\n",
     "deny write under /d except under /d/tmp, named \"*.t\"\n"),
    ("errno_last", "deny write with EPERM under /x\n", "deny write under /x with EPERM\n"),
    ("path_normalised", "deny write under //a//b/ except at /a/b//c/\n",
     "deny write under /a/b except at /a/b/c\n"),
    ("root_path", "deny write under //\n", "deny write under /\n"),
    ("quotes_dropped_when_not_needed", 'deny write under "/plain/path-1.0"\n',
     "deny write under /plain/path-1.0\n"),
    ("quotes_kept_when_needed", 'deny write under "/with space"\n',
     'deny write under "/with space"\n'),
    ("escapes_canonical", 'deny write under "/q\\"\\\\\\x41\\xff\\x0a é"\n',
     'deny write under "/q\\"\\\\A\\xff\\x0a é"\n'),
    ("globs_always_quoted", "deny read matching /a/b\n", 'deny read matching "/a/b"\n'),
    ("glob_text_kept", 'deny read matching "//a//**/"\n', 'deny read matching "//a//**/"\n'),
    ("userspace_instead_is_plain", "redirect open to userspace instead under /m\n",
     "redirect open to userspace under /m\n"),
    ("userspace_modes", "redirect open to   userspace after\nredirect open to userspace  before\n",
     "redirect open to userspace after\nredirect open to userspace before\n"),
    ("headers", "policy   media\nabi  v3\nmode   complain\nnames  case-insensitive\n",
     "policy media\nabi v3\nmode complain\nnames case-insensitive\n"),
    ("defaults", "default  deny  with   EPERM\n", "default deny with EPERM\n"),
    ("default_redirect", "default redirect  to userspace   instead\n",
     "default redirect to userspace\n"),
    ("default_allow", "default   allow\n", "default allow\n"),
    ("statement_order_kept", "deny write under /b\npolicy x\ndeny read under /a\n",
     "deny write under /b\npolicy x\ndeny read under /a\n"),
    ("blank_runs_shrink", "\n\ndeny write under /a\n\n\n\ndeny read under /b\n\n\n",
     "deny write under /a\n\ndeny read under /b\n"),
    ("continuation_joined", "deny read, \\\n   write \\\n   under /x \\\n   with EPERM\n",
     "deny read, write under /x with EPERM\n"),
    ("crlf_to_lf", "deny write under /a\r\n\r\ndeny read under /b  # c\r\n",
     "deny write under /a\n\ndeny read under /b  # c\n"),
    ("bom_dropped", b"\xef\xbb\xbfdeny write under /a\n", "deny write under /a\n"),
    ("errors_past_parsing_still_format", "deny wrte under /a/../b with EFOO\n",
     "deny wrte under /a/../b with EFOO\n"),
    # LANGUAGE.md §6: the `by` list after the scopes, before `except`; uid, gid, user, group,
    # ids by number; `except` lists its scopes, then `by` and its subjects.
    ("by_after_scopes", "deny write by uid 5 under /a with EPERM\n",
     "deny write under /a by uid 5 with EPERM\n"),
    ("by_sorted", "deny write under /a by group staff, user bob, gid 3, uid 70, uid 9-12, uid 5\n",
     "deny write under /a by uid 5, uid 9-12, uid 70, gid 3, user bob, group staff\n"),
    ("by_ids_canonical", "deny write under /a by uid 007, gid 5-5, uid 010-0020\n",
     "deny write under /a by uid 7, uid 10-20, gid 5\n"),
    ("by_repeats_kept", "deny write under /a by uid 7, uid 5, uid 7\n",
     "deny write under /a by uid 5, uid 7, uid 7\n"),
    ("except_by_after_scopes", "deny write under /srv except by group admin, uid 0, under /srv/tmp\n",
     "deny write under /srv except under /srv/tmp, by uid 0, group admin\n"),
    ("except_by_one_by", "deny write under /a except by uid 1 except by uid 0, by gid 2\n",
     "deny write under /a except by uid 0, uid 1, gid 2\n"),
    ("by_and_except_by", "deny write except by uid 0 by gid 10-19 under /a with EROFS\n",
     "deny write under /a by gid 10-19 except by uid 0 with EROFS\n"),
    ("two_by_lists_kept_apart", "deny write under /a by uid 2 by uid 1\n",
     "deny write under /a by uid 2 by uid 1\n"),
    ("subject_continuation", "deny write under /a \\\n  by uid 7, \\\n  uid 5\n",
     "deny write under /a by uid 5, uid 7\n"),
]


@pytest.mark.parametrize("source, expected", [e[1:] for e in EXAMPLES], ids=[e[0] for e in EXAMPLES])
def test_fmt_examples(source, expected):
    assert fmt(source) == expected
    assert fmt(expected) == expected


COMMENTED = """\
#!/usr/bin/env fpol
# A policy with comments everywhere.
policy   demo   # the name


#   indented   text inside a comment stays as it is   
  # an indented comment loses its indentation
deny write under /secret    # trailing comment
deny read, \\  # comment on a first continuation line
     write \\  # and on a middle one
     under /x   # and on the last one
deny read under "/a#b"  # a `#` inside a string is not a comment
# the end
"""

COMMENTED_FMT = """\
#!/usr/bin/env fpol
# A policy with comments everywhere.
policy demo  # the name

#   indented   text inside a comment stays as it is
# an indented comment loses its indentation
deny write under /secret  # trailing comment
# comment on a first continuation line
# and on a middle one
deny read, write under /x  # and on the last one
deny read under "/a#b"  # a `#` inside a string is not a comment
# the end
"""


def test_fmt_keeps_comments():
    assert fmt(COMMENTED) == COMMENTED_FMT
    assert fmt(COMMENTED_FMT) == COMMENTED_FMT


def test_fmt_comment_only_file():
    assert fmt("# one\n\n\n# two\n") == "# one\n\n# two\n"


def test_fmt_comment_after_continuation_that_ends_in_nothing():
    # line 2 continues line 1 but holds no token: its comment follows the statement
    assert fmt("deny write under /x \\\n  \\  # c\n") == "deny write under /x\n# c\n"


def test_fmt_keeps_every_comment_of_every_case():
    for path in _parseable_cases():
        text = path.read_bytes().decode("utf-8")
        tree, _, _ = parse(text, path.name)
        out = format_policy(tree)
        for c in tree.comments:
            assert c.text in out, (path.name, c.text)


# --- idempotence and meaning over every file we have --------------------------------------

def _parseable_cases() -> list[Path]:
    out = []
    for p in case_paths():
        _, _, reporter = parse(p.read_bytes(), p.name)
        if not reporter.has_errors:
            out.append(p)
    return out


PARSEABLE = _parseable_cases()
EXAMPLE_FILES = sorted((ROOT / "examples").glob("*.fpol"))


def test_most_cases_parse():
    assert len(PARSEABLE) >= 40


@pytest.mark.parametrize("path", PARSEABLE + EXAMPLE_FILES,
                         ids=[f"{p.parent.name}/{p.stem}" for p in PARSEABLE + EXAMPLE_FILES])
def test_fmt_is_idempotent_and_keeps_meaning(path):
    data = path.read_bytes()
    once = fmt(data)
    assert fmt(once) == once
    options = parse_case(path).options if path.parent.name == "cases" else {}
    before = sorted(d.code for d in check(data, path.name, **options).diagnostics)
    after = sorted(d.code for d in check(once, path.name, **options).diagnostics)
    assert before == after


def test_fmt_output_compiles_to_the_same_rules():
    """Two spellings of one policy: same canonical rule texts, same class count."""
    a = check("deny write,read under //x/ with EPERM\nmode complain\n", "a.fpol")
    b = check(fmt("deny write,read under //x/ with EPERM\nmode complain\n"), "a.fpol")
    assert a.ok and b.ok
    assert [r.text for r in a.policy.rules] == [r.text for r in b.policy.rules] == [
        "deny read, write under /x with EPERM"]
    assert a.policy.mode == b.policy.mode == "complain"
    assert len(a.classes.classes) == len(b.classes.classes)


# --- the command line ---------------------------------------------------------------------

CANONICAL = "deny write under /secret\n"
MESSY = "deny   write  under //secret/\n"


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "canon.fpol").write_text(CANONICAL)
    (tmp_path / "messy.fpol").write_text(MESSY)
    (tmp_path / "broken.fpol").write_text("deny write undr /x\n")
    return tmp_path


def test_cli_fmt_prints_canonical_text(files, capsys):
    assert main(["fmt", "messy.fpol"]) == 0
    out, err = capsys.readouterr()
    assert out == CANONICAL
    assert (files / "messy.fpol").read_text() == MESSY  # untouched


def test_cli_fmt_several_files(files, capsys):
    assert main(["fmt", "messy.fpol", "canon.fpol"]) == 0
    assert capsys.readouterr().out == CANONICAL + CANONICAL


def test_cli_fmt_check_exit_codes(files, capsys):
    assert main(["fmt", "--check", "canon.fpol"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert main(["fmt", "--check", "messy.fpol"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "messy.fpol" in err
    assert main(["fmt", "--check", "canon.fpol", "messy.fpol"]) == 1
    assert (files / "messy.fpol").read_text() == MESSY


def test_cli_fmt_check_crlf_is_not_canonical(files):
    (files / "crlf.fpol").write_bytes(CANONICAL.replace("\n", "\r\n").encode())
    assert main(["fmt", "--check", "crlf.fpol"]) == 1


def test_cli_fmt_syntax_error_exits_1_and_writes_nothing(files, capsys):
    assert main(["fmt", "broken.fpol"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "broken.fpol:1:12: error[FP001]" in err
    assert main(["fmt", "--check", "broken.fpol"]) == 1
    assert main(["fmt", "--write", "broken.fpol"]) == 1
    assert (files / "broken.fpol").read_text() == "deny write undr /x\n"


def test_cli_fmt_missing_file_exits_2(files, capsys):
    assert main(["fmt", "nope.fpol"]) == 2
    assert main(["fmt", "--check", "nope.fpol"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_fmt_usage_errors_exit_2(files, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fmt"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["fmt", "--check", "--write", "canon.fpol"])
    assert info.value.code == 2
    assert main(["fmt", "--write", "-"]) == 2


def test_cli_fmt_write_rewrites_in_place(files, capsys):
    path = files / "messy.fpol"
    os.chmod(path, 0o640)
    assert main(["fmt", "--write", "messy.fpol", "canon.fpol"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "reformatted messy.fpol" in err
    assert "canon.fpol" not in err
    assert path.read_text() == CANONICAL
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert main(["fmt", "--check", "messy.fpol"]) == 0
    assert sorted(p.name for p in files.iterdir()) == ["broken.fpol", "canon.fpol", "messy.fpol"]


def test_cli_fmt_write_leaves_canonical_files_alone(files):
    path = files / "canon.fpol"
    os.utime(path, (1_000_000, 1_000_000))
    assert main(["fmt", "--write", "canon.fpol"]) == 0
    assert os.stat(path).st_mtime == 1_000_000
    assert path.read_text() == CANONICAL


def test_cli_fmt_write_keeps_comments(files):
    path = files / "commented.fpol"
    path.write_text(COMMENTED)
    assert main(["fmt", "--write", str(path)]) == 0
    assert path.read_text() == COMMENTED_FMT
    assert main(["fmt", "--check", str(path)]) == 0
