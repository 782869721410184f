"""The data-driven diagnostics cases: tests/cases/*.fpol (format: tests/casefile.py).

Each case file is checked with `fpol.compiler.driver.check`, and the full list of
(line, column, end, severity, code, message) must equal the expectations written
in it. `python3 -m pytest tests/test_cases.py --update-cases` rewrites the
expectations from the actual output after an intended change; review the diff.

Inputs that cannot be written as UTF-8 text (bad bytes, NUL) are in BYTE_CASES below.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from casefile import (CASES_DIR, Case, CaseFormatError, Expect, actual, case_paths, compare,
                      parse_case, update_case)
from fpol.compiler.diagnostics import CODES
from fpol.compiler.driver import check, check_file
from fpol.compiler.parser import parse

CASE_PATHS = case_paths()


@pytest.mark.parametrize("path", CASE_PATHS, ids=[p.stem for p in CASE_PATHS])
def test_case(path, request):
    case = parse_case(path)
    got = actual(case.text, case.name, case.options)
    if request.config.getoption("--update-cases"):
        new_text = update_case(case)
        if new_text != case.text:
            path.write_bytes(new_text.encode("utf-8"))
        case = parse_case(path)
        got = actual(case.text, case.name, case.options)
    problem = compare(case, got)
    assert not problem, problem


def test_cases_exist():
    assert len(CASE_PATHS) >= 40


def test_every_code_is_covered():
    """Every FPnnn code in the table is expected by at least one case (FP002 by BYTE_CASES)."""
    seen = {e.code for p in CASE_PATHS for e in parse_case(p).expected}
    seen |= {code for _, _, expected in BYTE_CASES for (_, _, code, _) in expected or ()}
    missing = sorted(set(CODES) - seen)
    assert not missing, f"no case expects {', '.join(missing)}"
    unknown = sorted(seen - set(CODES))
    assert not unknown


def test_clean_cases_are_clean():
    """Files named clean_* expect nothing, and check() agrees (guards the naming)."""
    clean = [p for p in CASE_PATHS if p.name.startswith("clean_")]
    assert len(clean) >= 10
    for p in clean:
        case = parse_case(p)
        assert case.expected == [], p.name
        result = check(case.text, p.name, origin=str(p), **case.options)
        assert result.ok and result.diagnostics == [], p.name
        assert result.policy is not None and result.classes is not None


def test_check_file_matches_check():
    """Reading from disk gives the same diagnostics as checking the text."""
    for p in CASE_PATHS[:15] + [CASES_DIR / "define_errors.fpol", CASES_DIR / "include_errors.fpol"]:
        case = parse_case(p)
        on_disk = [Expect.of(d, str(p)) for d in check_file(str(p), **case.options).diagnostics]
        # Included files are named relative to the top file's name: here tests/cases/...
        on_disk = [dataclasses.replace(e, file=os.path.relpath(e.file, CASES_DIR)) if e.file else e
                   for e in on_disk]
        assert sorted(on_disk) == actual(case.text, p.name, case.options), p.name


# --- the case-file format itself ---------------------------------------------------------

def _case(tmp_path, text: str, name: str = "t.fpol") -> Case:
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    return parse_case(p)


def test_format_inline_and_header_markers(tmp_path):
    case = _case(tmp_path,
                 "# flags: --no-daemon\n"
                 "# expect: E:4:18-19 FP001 unterminated string; expected a path or a quoted string\n"
                 "deny wrte under /x  # a note # E:6-10 FP003 unknown operation or group `wrte`\n"
                 'deny write under "/x\n')
    assert case.options == {"no_daemon": True}
    assert case.expected == [
        Expect(3, 6, 3, 10, "FP003", "E", "unknown operation or group `wrte`"),
        Expect(4, 18, 4, 19, "FP001", "E", "unterminated string; expected a path or a quoted string"),
    ]
    assert compare(case, actual(case.text, case.name, case.options)) == ""


def test_format_several_markers_and_multiline_end(tmp_path):
    case = _case(tmp_path, "deny write under /x  # W:1-2:10 FP104 a # E:3-4 FP001 b\n")
    assert case.expected == [Expect(1, 1, 2, 10, "FP104", "W", "a"),
                             Expect(1, 3, 1, 4, "FP001", "E", "b")]


@pytest.mark.parametrize("text, complaint", [
    ("deny write  # E:1 FP001 x\n", "bad position"),
    ("deny write  # W:1-2 FP001 x\n", "FP001 is an error"),
    ("deny write  # E:1-2 FP101 x\n", "FP101 is a warning"),
    ("deny write  # E:1-2 FP999 x\n", "unknown code"),
    ("deny write  # E:1-2 oops\n", "malformed marker"),
    ("# expect: 3:1-2 FP001 x\n", "malformed `# expect:`"),
    ("# flags: --daemon-please\n", "unknown flag"),
])
def test_format_errors_are_reported(tmp_path, text, complaint):
    with pytest.raises(CaseFormatError, match=complaint):
        _case(tmp_path, text)


def test_compare_reports_a_readable_diff(tmp_path):
    case = _case(tmp_path, "deny wrte under /x  # E:6-10 FP003 unknown operation `wrte`\n")
    report = compare(case, actual(case.text, case.name, case.options))
    assert "-1:6-10 E FP003 unknown operation `wrte`" in report
    assert "+1:6-10 E FP003 unknown operation or group `wrte`" in report
    assert "   1 | deny wrte under /x" in report
    assert "--update-cases" in report


def test_update_rewrites_inline_and_header_markers(tmp_path):
    text = ("# flags: --no-daemon\n"
            "# stale comment kept\n"
            "deny wrte under /x  # keep me # E:1-2 FP003 stale\n"
            "redirect lookup to userspace\n"
            'deny write under "/x\n'
            "deny write under /ok  # E:1-2 FP003 stale, the line is fine now\n")
    case = _case(tmp_path, text)
    new = update_case(case)
    assert new == (
        "# flags: --no-daemon\n"
        "# expect: E:6:18-19 FP001 unterminated string; expected a path or a quoted string\n"
        "# stale comment kept\n"
        "deny wrte under /x  # keep me # E:6-10 FP003 unknown operation or group `wrte`\n"
        "redirect lookup to userspace  # E:1-29 FP025 this rule sends requests to userspace, but the "
        "policy is checked for a daemon-less (no_daemon) mount\n"
        'deny write under "/x\n'
        "deny write under /ok\n")
    p = tmp_path / "t.fpol"
    p.write_text(new)
    again = parse_case(p)
    assert compare(again, actual(again.text, again.name, again.options)) == ""
    assert update_case(again) == new  # stable


def test_update_keeps_crlf_and_is_stable(tmp_path):
    case = _case(tmp_path, "deny wrte\r\nallow read\r\n")
    new = update_case(case)
    assert new == "deny wrte  # E:6-10 FP003 unknown operation or group `wrte`\r\nallow read\r\n"
    p = tmp_path / "t.fpol"
    p.write_bytes(new.encode())
    assert update_case(parse_case(p)) == new


def test_update_header_in_a_file_without_final_newline(tmp_path):
    case = _case(tmp_path, 'deny write under "/x')
    new = update_case(case)
    assert new == ("# expect: E:2:18-19 FP001 unterminated string; expected a path or a quoted string\n"
                   'deny write under "/x')
    p = tmp_path / "t.fpol"
    p.write_text(new)
    again = parse_case(p)
    assert compare(again, actual(again.text, again.name, again.options)) == ""


def test_update_of_a_correct_case_changes_nothing():
    changed = [p.name for p in CASE_PATHS if update_case(parse_case(p)) != parse_case(p).text]
    assert changed == []


# --- inputs that are not UTF-8 text ----------------------------------------------------------

HINT_UTF8 = "policies are UTF-8 text; write other bytes in a quoted path as \\xNN"

# (id, bytes, [(line, column, code, message)])
BYTE_CASES = [
    # a bad byte is reported once (FP002), not again as an unexpected character
    ("latin1_byte", b"deny write under /caf\xe9\n",
     [(1, 22, "FP002", "invalid UTF-8 byte 0xe9")]),
    ("latin1_byte_then_more", b"deny write under /caf\xe9\ndeny wrte\n",
     [(1, 22, "FP002", "invalid UTF-8 byte 0xe9"),
      (2, 6, "FP003", "unknown operation or group `wrte`")]),
    ("bad_byte_in_comment", b"deny write under /x  # caf\xe9\nallow read\n",
     # an error anywhere stops the checks that need the whole policy (no FP102)
     [(1, 27, "FP002", "invalid UTF-8 byte 0xe9")]),
    ("bad_byte_in_string", b'deny write under "/caf\xe9"\n',
     [(1, 23, "FP002", "invalid UTF-8 byte 0xe9")]),
    ("nul_byte", b"deny write\0under /x\n",
     [(1, 11, "FP002", "NUL byte in policy source")]),
    ("nul_in_string", b'deny write under "/a\0b"\n',
     [(1, 21, "FP002", "NUL byte in policy source")]),
    ("many_bad_bytes", b"\xff" * 20 + b"\n",
     [(1, c, "FP002", "invalid UTF-8 byte 0xff") for c in range(1, 6)]),  # the first five
    ("many_bad_lines", b"".join(b"deny \xff\n" for _ in range(7)),
     [(n, 6, "FP002", "invalid UTF-8 byte 0xff") for n in range(1, 6)] +
     [(n, 6, "FP001", "unexpected character `\ufffd`; expected a name") for n in (6, 7)]),
    ("bad_byte_line_3", b"deny write under /x\n\n  \x80\n",
     [(3, 3, "FP002", "invalid UTF-8 byte 0x80")]),
    ("truncated_utf8", b"deny write under /x # \xe2\x82\n",
     [(1, 23, "FP002", "invalid UTF-8 byte 0xe2")]),
    ("utf8_bom", b"\xef\xbb\xbfdeny write under /x\n", []),
    # a byte order mark takes no column
    ("utf8_bom_columns", b"\xef\xbb\xbfdeny wrte\n",
     [(1, 6, "FP003", "unknown operation or group `wrte`")]),
    ("utf8_bom_bad_byte", b"\xef\xbb\xbfdeny write under /x  # \xff\n",
     [(1, 24, "FP002", "invalid UTF-8 byte 0xff")]),
    ("second_bom_is_junk", b"\xef\xbb\xbf\xef\xbb\xbfdeny\n",
     [(1, 1, "FP001", "unexpected character U+FEFF; expected `abi`, `allow`, `audit`, "
                      "`default`, `define`, `deny`, `include`, `mode`, `names`, `policy` or `redirect`")]),
    ("binary_junk", bytes(range(256)),
     None),  # only: no traceback, FP002 reported
]


@pytest.mark.parametrize("name, data, expected", BYTE_CASES, ids=[c[0] for c in BYTE_CASES])
def test_byte_case(name, data, expected, tmp_path):
    p = tmp_path / f"{name}.fpol"
    p.write_bytes(data)
    got = [(d.span.line, d.span.column, d.code, d.message) for d in check_file(str(p)).diagnostics]
    if expected is None:
        assert got and got[0][2] == "FP002"
        assert all(code in CODES for _, _, code, _ in got)
        return
    assert sorted(got) == sorted(expected)
    for d in check_file(str(p)).diagnostics:
        if d.code == "FP002" and "UTF-8" in d.message:
            assert d.hint == HINT_UTF8


def test_escaped_bytes_survive_where_raw_bytes_cannot():
    """What FP002's hint recommends works: \\xNN in a quoted path is clean."""
    tree, _, reporter = parse('deny write under "/caf\\xe9"\n', "t.fpol")
    assert reporter.items == []
    assert tree.statements[0].scopes[0].path.value == b"/caf\xe9"
    assert check('deny write under "/caf\\xe9"\n', "t.fpol").diagnostics == []


def test_case_files_are_utf8_text():
    for p in CASE_PATHS:
        data = p.read_bytes()
        data.decode("utf-8")
        assert b"\0" not in data, p.name
    assert CASES_DIR.is_dir()
