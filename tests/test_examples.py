"""The worked examples: each examples/NAME.fpol checks clean, is in canonical form, and
meets its case table examples/NAME.cases through `fpol test` (the reference evaluator).

The case tables are written by hand from design/LANGUAGE.md; this file also checks that
they stay useful: 15-40 cases, every rule of the policy seen deciding (or auditing, or
refusing a move) at least once, the default seen, moves exercised.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fpol import cli
from fpol.compiler.cases import parse_cases, run_cases
from fpol.compiler.diagnostics import Reporter
from fpol.compiler.driver import check
from fpol.compiler.evaluate import Evaluator
from fpol.compiler.fmt import format_policy
from fpol.compiler.parser import parse

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.fpol"))
IDS = [p.stem for p in EXAMPLES]

def test_examples_exist():
    assert len(EXAMPLES) >= 6
    for p in EXAMPLES:
        assert p.with_suffix(".cases").is_file(), f"{p.name} has no case table"


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_cases_pass_through_the_cli(path, capsys):
    """`fpol test examples/NAME.fpol` (cases beside the policy) reports N passed, 0 failed."""
    status = cli.main(["test", str(path)])
    out, err = capsys.readouterr()
    n_cases = len(parse_cases(path.with_suffix(".cases").read_text(encoding="utf-8")))
    assert out.strip().splitlines()[-1] == f"{n_cases} passed, 0 failed", out + err
    assert "FAIL" not in out
    assert status == 0


def test_cli_entry_point_runs_a_case_table():
    """The installed command (not just cli.main) runs a table and sets the exit status."""
    path = ROOT / "examples" / "secrets.fpol"
    proc = subprocess.run([sys.executable, "-m", "fpol", "test", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.fullmatch(r"\d+ passed, 0 failed", proc.stdout.strip().splitlines()[-1])


def test_a_wrong_expectation_fails(tmp_path, capsys):
    """The harness really compares: one wrong case gives `N passed, 1 failed` and status 1."""
    src = ROOT / "examples" / "uploads.fpol"
    cases = tmp_path / "wrong.cases"
    cases.write_text("open /uploads/a flags=FMODE_EXEC -> allow\n"
                     "unlink /uploads/a -> allow +audit\n", encoding="utf-8")
    status = cli.main(["test", str(src), str(cases)])
    out = capsys.readouterr().out
    assert status == 1
    assert out.strip().splitlines()[-1] == "1 passed, 1 failed"
    assert "wrong.cases:1: FAIL" in out


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_example_checks_clean(path):
    result = check(path.read_bytes(), path.name, origin=str(path))
    assert result.diagnostics == [], [f"{d.span.line}: {d.code} {d.message}"
                                      for d in result.diagnostics]
    assert result.ok and result.classes is not None


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_example_check_cli(path, capsys):
    assert cli.main(["check", "--strict", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: ok (policy ") and err == ""


def _canonical(path: Path) -> str:
    reporter = Reporter(path.name)
    tree, _, _ = parse(path.read_bytes(), path.name, reporter)
    assert not reporter.has_errors
    return format_policy(tree)


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_example_is_canonical(path, capsys):
    assert _canonical(path) == path.read_text(encoding="utf-8")
    assert cli.main(["fmt", "--check", str(path)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_case_table_covers_the_policy(path):
    """15-40 cases; each rule decides, audits or is escaped by a refused move in some case;
    the default decides some case; rename or link is exercised."""
    checked = check(path.read_bytes(), path.name, origin=str(path))
    policy = checked.policy
    cases = parse_cases(path.with_suffix(".cases").read_text(encoding="utf-8"))
    assert 15 <= len(cases) <= 40, len(cases)
    results = run_cases(policy, cases, Evaluator(policy).evaluate)
    assert [r.problem for r in results if r.problem] == []
    seen, default_seen = set(), False
    for r in results:
        d = r.verdict.decision
        seen |= set(d.rules) | set(d.audit_rules)
        if r.verdict.lost_rule is not None:
            seen.add(r.verdict.lost_rule)
        default_seen |= (not d.rules and not r.verdict.exdev)
    unseen = [policy.rules[i].line for i in range(len(policy.rules)) if i not in seen]
    assert not unseen, f"no case exercises the rules on lines {unseen}"
    assert default_seen
    assert any(c.request.op in ("rename", "link") for c in cases)
    # Every rule line named in a case is a real rule line.
    rule_lines = {r.line for r in policy.rules}
    named = {c.expect.rule_line for c in cases if c.expect.rule_line}
    assert named <= rule_lines, named - rule_lines
    # Open flags and access masks are exercised where the policy is about them.
    assert any(c.request.op == "open" for c in cases)
