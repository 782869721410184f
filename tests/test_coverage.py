"""`fpol test --coverage` (rules that decided no case, op groups each rule was exercised
for) and `fpol test --junit FILE` (JUnit XML for CI)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from fpol.cli import main

ROOT = Path(__file__).resolve().parent.parent

POLICY = """deny write under /a with EPERM
deny read under /b
audit read under /a
allow read under /c
"""
CASES = """write /a/x -> deny EPERM line 1
open /a/x flags=O_RDONLY -> allow +audit
rename /a/x to /t/x -> deny EPERM line 1
read /z -> allow default
read /a/y -> deny
"""


def _files(tmp_path):
    (tmp_path / "p.fpol").write_text(POLICY)
    (tmp_path / "p.cases").write_text(CASES)
    return str(tmp_path / "p.fpol")


def test_coverage_lists_groups_and_unused_rules(tmp_path, capsys):
    policy = _files(tmp_path)
    assert main(["test", "--coverage", policy]) == 1  # the last case fails
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("FAIL read /a/y: expected deny, got allow +audit (decision allow)")
    assert out[1] == "4 passed, 1 failed"
    assert out[2] == "coverage: 2 of 4 rules decided or audited some case"
    assert out[3] == f"  {policy}:1 deny write under /a with EPERM: write, delete"
    assert out[4] == f"  {policy}:3 audit read under /a: read"
    assert out[5:] == ["rules that decided no case (2):",
                       f"  {policy}:2 deny read under /b",
                       f"  {policy}:4 allow read under /c"]


def test_coverage_of_an_example_names_included_rules(capsys):
    assert main(["test", "--coverage", str(ROOT / "examples" / "home.fpol")]) == 0
    out = capsys.readouterr().out
    assert "coverage: 6 of 6 rules" in out
    assert "common/credentials.fpol:15 audit read matching" in out
    assert "no gain by moving" in out  # line 15's rule is escaped by a refused link


def test_junit(tmp_path, capsys):
    policy = _files(tmp_path)
    junit = tmp_path / "out" / "report.xml"
    junit.parent.mkdir()
    assert main(["test", "--junit", str(junit), policy]) == 1
    capsys.readouterr()
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "5" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert [c.get("line") for c in cases] == ["1", "2", "3", "4", "5"]
    assert cases[0].get("name") == "write /a/x -> deny EPERM line 1"
    (failure,) = [c.find("failure") for c in cases if c.find("failure") is not None]
    assert "expected deny, got allow +audit" in failure.get("message")
    assert main(["test", "--junit", "-", policy]) == 1
    assert "<testsuite" in capsys.readouterr().out


def test_junit_unwritable(tmp_path, capsys):
    policy = _files(tmp_path)
    assert main(["test", "--junit", str(tmp_path / "no" / "dir" / "r.xml"), policy]) == 2
    assert capsys.readouterr().err.startswith("fpol: cannot write ")


def test_coverage_judges_each_case_for_its_requester(tmp_path, capsys):
    """A rule restricted to some requesters covers the cases made by them (uid=, gid=)."""
    (tmp_path / "s.fpol").write_text("deny write under /a by uid 1000\ndeny read under /a by gid 50\n")
    (tmp_path / "s.cases").write_text("write /a/x uid=1000 -> deny line 1\nread /a/x -> allow\n")
    policy = str(tmp_path / "s.fpol")
    assert main(["test", "--coverage", policy]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "coverage: 1 of 2 rules decided or audited some case"
    assert out[2] == f"  {policy}:1 deny write under /a by uid 1000: write"
