"""Who is asking (LANGUAGE.md §6), as the front end and the tools see it: names resolved
on this machine and shown as numbers, `fpol explain --uid/--gid` (text and JSON), case
tables with `uid=`/`gid=` run by `fpol test`, and one canonical rule text per spelling.

The evaluator's decisions are table rows in tests/test_evaluator.py (SUBJECT_ROWS); the
diagnostics are cases in tests/cases/subject_*.fpol; spelling equivalence of the
generated C is in tests/test_golden.py (SPELLINGS)."""

from __future__ import annotations

import json
import pwd

import pytest

from fpol.cli import main
from fpol.compiler.cases import CaseSyntaxError, parse_cases, parse_request
from fpol.compiler.driver import check
from fpol.compiler.evaluate import Evaluator

POLICY = """\
default deny
allow read under /srv
allow write under /srv/db by uid 34, gid 34
deny write under /srv/db/keys except by uid 0 with EPERM
deny read under /srv/private by uid 10000-19999
"""

CASES = """\
read /srv/x                               -> allow line 2
read /srv/private/k uid=10000             -> deny EACCES line 5
read /srv/private/k uid=20000             -> allow line 2
write /srv/db/x uid=34                    -> allow line 3
write /srv/db/x uid=35 gid=34             -> allow line 3
write /srv/db/x uid=35 gid=35             -> deny EACCES default
write /srv/db/x                           -> deny EACCES default
write /srv/db/keys/k uid=34               -> deny EPERM line 4
write /srv/db/keys/k                      -> deny EACCES default
rename /srv/private/k to /srv/k uid=12345 -> deny EACCES default
"""


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "srv.fpol").write_text(POLICY)
    (tmp_path / "srv.cases").write_text(CASES)
    (tmp_path / "plain.fpol").write_text("deny write under /secret with EPERM\n")
    return tmp_path


# --- names and numbers -------------------------------------------------------------

def test_names_resolve_to_this_machines_numbers():
    root = pwd.getpwuid(0).pw_name
    policy = check(f"deny read under /a by user {root}, group {root}\n", "p.fpol").policy
    (rule,) = policy.rules
    assert [(s.kind, s.low, s.high, s.text) for s in rule.subjects] == [
        ("uid", 0, 0, f"user {root}"), ("gid", 0, 0, f"group {root}")]
    assert "  by uid 0, gid 0\n" in policy.dump()


def test_emit_policy_shows_numbers(files, capsys):
    (files / "n.fpol").write_text("deny read under /a by user root except by uid 5-9, group root\n")
    assert main(["compile", "--emit", "policy", "n.fpol"]) == 0
    out = capsys.readouterr().out
    assert "rule 0 (line 1): deny read under /a by user root except by uid 5-9, group root\n" in out
    assert "  by uid 0\n  except by uid 5-9, gid 0\n" in out


def test_unknown_user_has_did_you_mean(files, capsys):
    (files / "u.fpol").write_text("deny read under /a by user roott\n")
    assert main(["check", "u.fpol"]) == 1
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "u.fpol:1:28: error[FP036]: unknown user `roott` on this machine" in err
    assert "did you mean `root`?" in err


def test_subjects_are_canonical_in_rule_text():
    """Two orderings of one list are one rule: the same text (the C comments), the same
    subjects, and a duplicate warning when both are written."""
    a = check("deny write under /a by gid 3, uid 7, uid 5\n", "p.fpol").policy.rules[0]
    b = check("deny write by uid 5, gid 3, uid 7 under /a\n", "p.fpol").policy.rules[0]
    assert a.text == b.text == "deny write under /a by uid 5, uid 7, gid 3"
    assert a.subjects == b.subjects
    both = check("deny write under /a by uid 7, uid 5\ndeny write under /a by uid 5, uid 7\n",
                 "p.fpol")
    assert [d.code for d in both.diagnostics] == ["FP104"]
    # ...while the same rule for someone and for everyone are two rules.
    two = check("deny write under /a by uid 5\ndeny write under /a\n", "p.fpol")
    assert [d.code for d in two.diagnostics] == []


def test_definitions_do_not_apply_to_subjects():
    result = check("define admins = /x\ndeny read under /a by user $admins\n", "p.fpol")
    (error,) = [d for d in result.diagnostics if d.is_error]
    assert error.code == "FP001" and "stand for paths only" in error.hint


# --- fpol explain --------------------------------------------------------------------

def test_explain_text_says_whom_it_decided_for(files, capsys):
    assert main(["explain", "srv.fpol", "--op", "write", "--path", "/srv/db/x",
                 "--uid", "35", "--gid", "34"]) == 0
    assert capsys.readouterr().out == (
        "write /srv/db/x uid=35 gid=34: allow\n"
        "  as uid 35, gid 34\n"
        "  decided by srv.fpol:3: allow write under /srv/db by uid 34, gid 34\n")


def test_explain_without_a_subject_says_uid_0(files, capsys):
    assert main(["explain", "srv.fpol", "--op", "write", "--path", "/srv/db/x"]) == 0
    assert capsys.readouterr().out == (
        "write /srv/db/x: deny EACCES\n"
        "  as uid 0, gid 0 (give --uid and --gid to ask for another requester)\n"
        "  decided by the default (srv.fpol:1: default deny)\n")


def test_explain_on_a_policy_without_subjects(files, capsys):
    assert main(["explain", "plain.fpol", "--op", "write", "--path", "/secret/k"]) == 0
    assert capsys.readouterr().out == (
        "write /secret/k: deny EPERM\n"
        "  decided by plain.fpol:1: deny write under /secret with EPERM\n")
    assert main(["explain", "plain.fpol", "--op", "write", "--path", "/secret/k", "--uid", "7"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "write /secret/k uid=7: deny EPERM",
        "  as uid 7, gid 0: no rule of this policy depends on who is asking"]


def test_explain_json_names_the_subject(files, capsys):
    assert main(["explain", "srv.fpol", "--op", "read", "--path", "/srv/private/k",
                 "--uid", "12345", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subject"] == {"uid": 12345, "gid": 0}
    assert out["decision"] == "deny" and out["rule"]["line"] == 5
    assert main(["explain", "srv.fpol", "--op", "read", "--path", "/srv/private/k",
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subject"] == {"uid": 0, "gid": 0} and out["decision"] == "allow"


@pytest.mark.parametrize("args, message", [
    (["--uid", "-1"], "`--uid` takes a decimal number, not `-1`"),
    (["--uid", "root"], "`--uid` takes a decimal number, not `root`"),
    (["--gid", "4294967295"], "--gid 4294967295 is out of range: ids go up to 4294967294"),
])
def test_explain_bad_ids_are_usage_errors(files, capsys, args, message):
    assert main(["explain", "srv.fpol", "--op", "read", "--path", "/srv/x"] + args) == 2
    assert capsys.readouterr().err == f"fpol: {message}\n"


# --- case tables ----------------------------------------------------------------------

def test_case_requests_take_uid_and_gid():
    req = parse_request("open /a flags=O_WRONLY uid=1000 gid=100".split(), 1)
    assert (req.uid, req.gid) == (1000, 100)
    req = parse_request("rename /a to /b gid=7".split(), 1)
    assert (req.uid, req.gid, req.to) == (0, 7, (b"b",))


@pytest.mark.parametrize("line, message", [
    ("read /a uid=x -> allow", "line 1: `uid` takes a decimal number, not `x`"),
    ("read /a gid=-3 -> allow", "line 1: `gid` takes a decimal number, not `-3`"),
    ("read /a uid=4294967295 -> allow", "line 1: uid 4294967295 is out of range: ids go up to 4294967294"),
])
def test_case_bad_ids(line, message):
    with pytest.raises(CaseSyntaxError) as e:
        parse_cases(line + "\n")
    assert str(e.value) == message


def test_fpol_test_honours_uid_and_gid(files, capsys):
    assert main(["test", "srv.fpol", "-v"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("10 passed, 0 failed\n"), out


def test_fpol_test_names_the_requester_of_a_failure(files, capsys):
    (files / "bad.cases").write_text("read /srv/private/k uid=10000 -> allow\n")
    assert main(["test", "srv.fpol", "bad.cases"]) == 1
    assert capsys.readouterr().out.splitlines()[0] == (
        "bad.cases:1: FAIL read /srv/private/k uid=10000: expected allow, got deny EACCES "
        "(decision deny)")


def test_each_case_is_decided_for_its_requester():
    ev = Evaluator(check(POLICY, "srv.fpol").policy)
    for case in parse_cases(CASES):
        v = ev.evaluate(case.request)
        assert (v.request.uid, v.request.gid) == (case.request.uid, case.request.gid)


@pytest.mark.parametrize("text, hint", [
    ("deny write by uid\n", "write e.g. `uid 1000` or `uid 1000-1999` (decimal ids, 0 to 4294967294)"),
    ("deny write by gid -1\n", "write e.g. `gid 1000` or `gid 1000-1999` (decimal ids, 0 to 4294967294)"),
    ("deny write by uid 5 - 7\n", "a range has no blanks: `uid 5-M`"),
    ("deny write by group\n", "write e.g. `group backup`"),
    ("deny write by bob\n", "a subject is `uid N`, `uid N-M`, `gid N`, `gid N-M`, `user NAME` or "
                           "`group NAME`, e.g. `by user backup`"),
    ("deny write by usr 5\n", "did you mean `user`?"),
    ("deny write except uid 0\n", "write `except by uid 0` (a scope item may come before or after it)"),
    ("deny write by user $x\n", "definitions (`$NAME`) stand for paths only; write the name (or id) itself"),
])
def test_syntax_errors_in_subjects_have_hints(text, hint):
    (d,) = check(text, "p.fpol").diagnostics
    assert (d.code, d.hint) == ("FP001", hint)


# --- the language server ----------------------------------------------------------------

def test_lsp_completes_and_hovers_subjects(tmp_path):
    from fpol.lsp import Document, completions, hover

    doc = Document("deny write under /a by \nallow read under /a by user root except by uid 5-9\n",
                   str(tmp_path / "x.fpol"))
    assert [i.label for i in completions(doc, 0, 23)] == ["uid", "gid", "user", "group"]
    assert "root" in [i.label for i in completions(Document("deny write by user \n", "y.fpol"), 0, 19)]
    assert not {"by", "uid", "gid", "user", "group"} & {i.label for i in completions(doc, 2, 0)}
    assert hover(doc, 1, 30).endswith("`user root` is uid 0 on this machine")
    assert hover(doc, 1, 46).endswith("uid 5 to 9 (5 ids)")


def test_lsp_quick_fixes_for_subjects(tmp_path):
    """The did-you-mean hints replace what they name: the user name, or the whole item."""
    from fpol.lsp import Document, quick_fixes

    text = "deny read under /a by user roott\ndeny read under /a by uid root\n"
    doc = Document(text, str(tmp_path / "x.fpol"))
    fixes = {(p.start, p.end, p.fix) for p in quick_fixes(doc, (0, 0), (2, 0))}
    assert fixes == {((0, 27), (0, 32), "root"), ((1, 22), (1, 30), "user root")}
