"""How diagnostics are shown: the text rendering, `fpol check --format json`, and
the exit codes of `fpol check` (LANGUAGE.md §4)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fpol.cli import main
from fpol.compiler.diagnostics import (CODES, Diagnostic, PolicyError, Reporter, Span, code,
                                       did_you_mean, render_json, render_text)
from fpol.compiler.driver import check

JSON_FIELDS = {"severity", "code", "message", "file", "line", "column", "end_line", "end_column"}


def _render(text: str, name: str = "t.fpol", **options) -> str:
    result = check(text, name, **options)
    return render_text(result.diagnostics, {name: list(result.source.lines)})


# --- text rendering ------------------------------------------------------------------------

def test_render_error_with_caret_and_hint():
    assert _render("deny wrte under /x\n") == (
        "t.fpol:1:6: error[FP003]: unknown operation or group `wrte`\n"
        "   1 | deny wrte under /x\n"
        "            ^^^^\n"
        "  = hint: did you mean `write`?")


def test_render_warning():
    assert _render("deny write under /x\nallow read under /y\n") == (
        "t.fpol:2:1: warning[FP102]: allow rule under `default allow` changes nothing\n"
        "   2 | allow read under /y\n"
        "       ^^^^^^^^^^^^^^^^^^^\n"
        "  = hint: allow only matters against `default deny` or `default redirect`; "
        "to carve out an exception from a deny, use `except`")


def test_render_without_hint_has_no_hint_line():
    text = _render("deny write under /x\nabi v4 v3\n")
    assert text.splitlines()[0] == ("t.fpol:2:8: error[FP001]: unexpected `v3`; expected end of line")
    assert "hint" not in text
    assert text.splitlines()[2] == "              ^^"


def test_render_related_note():
    assert _render("policy one\npolicy two\n") == (
        "t.fpol:2:1: error[FP006]: more than one `policy` statement\n"
        "   2 | policy two\n"
        "       ^^^^^^^^^^\n"
        "t.fpol:1:1: note: first `policy` here\n"
        "   1 | policy one\n"
        "       ^^^^^^^^^^\n"
        "  = hint: keep one `policy` line")


def test_render_errno_tie_names_both_rules():
    text = _render("deny write under /x with EPERM\ndeny write under /x with EROFS\n")
    lines = text.splitlines()
    assert lines[0].startswith("t.fpol:1:1: error[FP023]: errno tie: rules on lines 1, 2 ")
    assert "t.fpol:2:1: note: ties with this rule" in lines
    assert lines[-1] == "  = hint: make one scope more specific, or use one errno"


def test_render_caret_for_end_of_statement_is_after_the_last_word():
    assert _render("deny write under\n").splitlines()[:3] == [
        "t.fpol:1:17: error[FP001]: unexpected end of statement; expected a path or a quoted string",
        "   1 | deny write under",
        "                       ^",
    ]


def test_render_caret_on_a_continuation_line():
    text = _render("deny write \\\n    undr /x\n")
    assert text.splitlines()[:3] == [
        "t.fpol:2:5: error[FP001]: unexpected `undr`; expected `,`, `at`, `by`, `except`, "
        "`matching`, `named`, `to`, `under`, `with` or end of line",
        "   2 |     undr /x",
        "           ^^^^",
    ]


def test_render_multiline_span_marks_the_first_line():
    text = _render("deny write under /x\ndeny write \\\n  under /x\n")
    assert text.splitlines()[:3] == [
        "t.fpol:2:1: warning[FP104]: duplicate of the rule on line 1",
        "   2 | deny write \\",
        "       ^",  # a span over several lines: one caret where it starts
    ]


def test_render_tabs_keep_the_caret_aligned():
    text = _render("\tdeny\twrte under /x\n")
    assert text.splitlines()[1:3] == [
        "   1 |  deny wrte under /x",
        "             ^^^^",
    ]


def test_render_crlf_line_has_no_carriage_return():
    text = _render("deny wrte under /x\r\n")
    assert "\r" not in text
    assert text.splitlines()[1] == "   1 | deny wrte under /x"


def test_render_cuts_a_huge_line_around_the_span():
    line = "deny write under /x" + " " * 1_000_000 + "wrte"
    text = _render(line + "\n")
    first, excerpt, caret = text.splitlines()[:3]
    assert first.startswith("t.fpol:1:1000020: error[FP001]: unexpected `wrte`")
    assert len(excerpt) < 200
    assert excerpt.endswith("wrte")
    assert caret.index("^") == excerpt.index("wrte")


def test_render_without_source_lines_is_one_line():
    d = check("deny wrte\n", "t.fpol").diagnostics[0]
    assert d.render() == ("t.fpol:1:6: error[FP003]: unknown operation or group `wrte`\n"
                          "  = hint: did you mean `write`?")


def test_render_span_past_the_end_of_the_text():
    d = Diagnostic("FP001", "unexpected end of statement", "t.fpol", Span.point(1, 11))
    assert d.render(["deny write"]) == (
        "t.fpol:1:11: error[FP001]: unexpected end of statement\n"
        "   1 | deny write\n"
        "                 ^")


def test_every_code_has_a_severity_matching_its_number():
    for number, (severity, title) in CODES.items():
        assert number.startswith("FP0") == (severity == "error"), number
        assert number.startswith("FP1") == (severity == "warning"), number
        assert title


def test_reporter_rejects_unknown_codes():
    with pytest.raises(AssertionError):
        Reporter("t").add("FP999", "x", Span.point(1, 1))


def test_policy_error_lists_every_error():
    result = check("deny wrte\nabi v9\n", "t.fpol")
    with pytest.raises(PolicyError) as info:
        result.require()
    assert [d.code for d in info.value.diagnostics] == ["FP003", "FP005"]
    assert "t.fpol:1:6: error[FP003]" in str(info.value)


@pytest.mark.parametrize("source, hint", [
    ("deny wrte\n", "did you mean `write`?"),
    ("deny Write\n", "did you mean `write`?"),
    ("deny write with EPREM\n", "did you mean `EPERM`?"),
    ("deny write with eacces\n", "did you mean `EACCES`?"),
    ("abi v5\n", "one of `v3`, `v4`"),
    ("abi V4\n", "did you mean `v4`?"),
    ("mode enforcing\n", "did you mean `enforce`?"),
    ("names insensitive\n", "did you mean `case-insensitive`?"),
    ("alow read\n", "did you mean `allow`?"),
    ("Deny read\n", "did you mean `deny`?"),
    ("deny write undr /x\n", "did you mean `under`?"),
    ("deny write under /x exept under /x/y\n", "did you mean `except`?"),
    ("redirect lookup to userspce\n", "did you mean `userspace`?"),
    ("deny write under secret\n", "paths start with `/` (the mount root), or go in double quotes"),
    ("deny read under /a*\n",
     'globs go in quotes: `matching "/home/*/.ssh/**"` or `named "*.log"`'),
    ('deny read under "/a\n', 'close the string with `"` on the same line'),
    ("deny read under /a \\ at /b\n",
     "a backslash continues a statement only at the end of a line"),
    ("policy mediaserver\n", "fuse-bpf instance names are at most 14 characters and carry a "
                             "class number; try `mediaser`"),
    ("policy My-Pol\n", "instance names are built from it: try `my_pol`"),
    ("deny write under /a/../b\n", "write the path without `.` and `..` components"),
    ('deny write under "x/y"\n', "paths are absolute inside the mount: write `/x/y`"),
    ('deny write under "/a\\q"\n', 'strings know only \\", \\\\ and \\xNN (two hex digits)'),
    ("redirect open\n", "write e.g. `redirect lookup to userspace` (add `before` or `after` "
                        "to keep the kernel doing the op)"),
    ("deny write under /x\ndeny write under /x\n", "delete one of them"),
])
def test_hints(source, hint):
    hints = [d.hint for d in check(source, "t.fpol").diagnostics]
    assert hint in hints, hints


def test_did_you_mean_gives_up_on_distant_words():
    assert did_you_mean("frobnicate", ["read", "write"]) is None
    assert did_you_mean("READ", ["read", "write"]) == "did you mean `read`?"


def test_render_json_fields():
    result = check("deny wrte under /x\n", "t.fpol")
    [obj] = json.loads(render_json(result.diagnostics))
    assert JSON_FIELDS <= set(obj)
    assert {k: obj[k] for k in JSON_FIELDS} == {
        "severity": "error", "code": "FP003",
        "message": "unknown operation or group `wrte`", "file": "t.fpol",
        "line": 1, "column": 6, "end_line": 1, "end_column": 10,
    }


# --- the command line -------------------------------------------------------------------

@pytest.fixture
def policy_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.fpol").write_text("deny write under /secret\n")
    (tmp_path / "bad.fpol").write_text("deny wrte under /x\nabi v4 v3\n")
    (tmp_path / "warn.fpol").write_text("allow read under /x\n")
    (tmp_path / "daemon.fpol").write_text("redirect lookup to userspace\n")
    return tmp_path


def test_cli_check_clean_exits_0(policy_dir, capsys):
    assert main(["check", "ok.fpol"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok.fpol: ok")
    assert err == ""


def test_cli_check_errors_exit_1_with_rendered_text(policy_dir, capsys):
    assert main(["check", "bad.fpol"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "bad.fpol:1:6: error[FP003]: unknown operation or group `wrte`\n"
        "   1 | deny wrte under /x\n"
        "            ^^^^\n"
        "  = hint: did you mean `write`?\n"
        "bad.fpol:2:8: error[FP001]: unexpected `v3`; expected end of line\n"
        "   2 | abi v4 v3\n"
        "              ^^\n"
        "2 error(s), 0 warning(s) in 1 file(s)\n")


def test_cli_check_warnings_exit_0_and_1_with_strict(policy_dir, capsys):
    assert main(["check", "warn.fpol"]) == 0
    _, err = capsys.readouterr()
    assert "warn.fpol:1:1: warning[FP102]" in err
    assert "0 error(s), 1 warning(s) in 1 file(s)" in err
    assert main(["check", "--strict", "warn.fpol"]) == 1
    assert main(["check", "--strict", "ok.fpol"]) == 0


def test_cli_check_no_daemon(policy_dir, capsys):
    assert main(["check", "daemon.fpol"]) == 0
    assert main(["check", "--no-daemon", "daemon.fpol"]) == 1
    _, err = capsys.readouterr()
    assert "error[FP025]" in err


def test_cli_check_several_files(policy_dir, capsys):
    assert main(["check", "ok.fpol", "warn.fpol", "bad.fpol"]) == 1
    _, err = capsys.readouterr()
    assert "2 error(s), 1 warning(s) in 3 file(s)" in err
    assert err.index("warn.fpol:1:1") < err.index("bad.fpol:1:6")


def test_cli_check_json(policy_dir, capsys):
    assert main(["check", "--format", "json", "bad.fpol", "warn.fpol"]) == 1
    out, err = capsys.readouterr()
    items = json.loads(out)
    assert [(d["file"], d["line"], d["column"], d["code"], d["severity"]) for d in items] == [
        ("bad.fpol", 1, 6, "FP003", "error"),
        ("bad.fpol", 2, 8, "FP001", "error"),
        ("warn.fpol", 1, 1, "FP102", "warning"),
    ]
    for d in items:
        assert JSON_FIELDS <= set(d)
        assert isinstance(d["message"], str) and d["message"]
        assert all(isinstance(d[k], int) for k in ("line", "column", "end_line", "end_column"))
    assert items[0]["end_column"] == 10 and items[0]["end_line"] == 1
    assert items[0]["message"] == "unknown operation or group `wrte`"


def test_cli_check_json_clean_is_an_empty_list(policy_dir, capsys):
    assert main(["check", "--format", "json", "ok.fpol"]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out) == []


def test_cli_check_json_warning_exit_codes(policy_dir, capsys):
    assert main(["check", "--format", "json", "warn.fpol"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["code"] == "FP102"
    assert main(["check", "--format", "json", "--strict", "warn.fpol"]) == 1


def test_cli_check_json_bytes_and_binary(policy_dir, capsys):
    (policy_dir / "bin.fpol").write_bytes(b"deny write under /caf\xe9\n\0")
    assert main(["check", "--format", "json", "bin.fpol"]) == 1
    items = json.loads(capsys.readouterr().out)
    assert {d["code"] for d in items} >= {"FP002"}


def test_cli_check_missing_file_exits_2(policy_dir, capsys):
    assert main(["check", "nonexistent.fpol"]) == 2
    _, err = capsys.readouterr()
    assert "nonexistent.fpol" in err
    assert "Traceback" not in err


def test_cli_check_directory_exits_2(policy_dir, capsys):
    assert main(["check", str(policy_dir)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_no_command_exits_2(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_cli_check_without_files_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check"])
    assert info.value.code == 2
    assert "FILE" in capsys.readouterr().err


def test_cli_check_unknown_format_exits_2(policy_dir, capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", "--format", "xml", "ok.fpol"])
    assert info.value.code == 2


def test_cli_check_stdin(policy_dir):
    proc = subprocess.run([sys.executable, "-m", "fpol", "check", "-"], input=b"deny wrte\n",
                          capture_output=True, cwd=policy_dir)
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("<stdin>:1:6: error[FP003]")


def test_cli_entry_point_subprocess(policy_dir):
    """The installed console script: exit codes and JSON on stdout, nothing else there."""
    ok = subprocess.run(["fpol", "check", "ok.fpol"], capture_output=True, cwd=policy_dir)
    assert ok.returncode == 0
    bad = subprocess.run(["fpol", "check", "--format", "json", "bad.fpol"], capture_output=True,
                         cwd=policy_dir)
    assert bad.returncode == 1
    assert [d["code"] for d in json.loads(bad.stdout)] == ["FP003", "FP001"]
    usage = subprocess.run(["fpol", "check"], capture_output=True, cwd=policy_dir)
    assert usage.returncode == 2
    assert b"Traceback" not in usage.stderr


def test_quoted_code_holding_backticks_reads_as_markdown_does():
    assert code("\\q") == "`\\q`"
    assert code("\\`") == "`` \\` ``"  # padded: it ends with a backtick
    assert code("a``b") == "```a``b```"


def test_an_unexpected_backtick_is_quoted_readably():
    (d,) = [d for d in check(b"default allow\ndeny write under /a `b\n", "p.fpol").diagnostics
            if d.code == "FP001"]
    assert d.message.startswith("unexpected character `` ` ``;"), d.message
    assert (d.span.line, d.span.column) == (2, 21)
