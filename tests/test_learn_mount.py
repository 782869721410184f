"""`fpol learn` end to end: a complain-mode mount, a scripted workload, its audit log, the
proposal; the proposed policy allows every logged request (reference evaluator) and, on a
new mount in enforce mode, the same workload runs without a refusal; `fpol diff` of the old
policy against the proposal stays inside the widening (the logged directories)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from fpol.cli import main
from fpol.compiler.diff import diff
from fpol.compiler.driver import check_file
from fpol.compiler.evaluate import Evaluator
from fpol.compiler.learn import read_log, refused

from fusemount import Mount, missing

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"real mounts: {missing()}")

POLICY = """# A build sandbox on trial: learn what the jobs need.
policy learnt
mode complain
default deny with EPERM
allow list, stat, lookup
allow all under /build
deny write under /build/.git
"""


def _tree(root: Path) -> None:
    for d in ("build/.git", "data/out", "etc", "srv/cache"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "tool.conf").write_text("x=1\n")
    (root / "data" / "out" / "old.log").write_text("old\n")
    (root / "build" / ".git" / "index").write_text("idx\n")
    (root / "srv" / "cache" / "k.bin").write_text("k\n")


def _workload(mnt: Path) -> None:
    """What the job does: every step must succeed once the policy is learned."""
    (mnt / "etc" / "tool.conf").read_text()
    with open(mnt / "data" / "out" / "new.log", "w") as f:
        f.write("new\n")
    with open(mnt / "data" / "out" / "old.log", "a") as f:
        f.write("more\n")
    os.mkdir(mnt / "data" / "out" / "run1")
    with open(mnt / "build" / ".git" / "index", "w") as f:
        f.write("idx2\n")
    (mnt / "srv" / "cache" / "k.bin").read_text()
    os.rename(mnt / "data" / "out" / "new.log", mnt / "data" / "out" / "new1.log")


def _mount(policy: Path, src: Path, tmp: Path, name: str) -> Mount:
    return Mount(policy, src, tmp / f"mnt-{name}", tmp / f"{name}.jsonl").start()


def test_learn_from_a_complain_mode_mount(tmp_path, capsys):
    policy = tmp_path / "learnt.fpol"
    policy.write_text(POLICY)
    src = tmp_path / "src"
    _tree(src)
    m = _mount(policy, src, tmp_path, "complain")
    try:
        _workload(Path(m.mnt))
    finally:
        m.stop()
    log_path = tmp_path / "complain.jsonl"
    log = read_log(log_path.read_text())
    assert log.entries, "complain mode logged nothing"

    assert main(["learn", str(log_path), "--policy", str(policy), "--widen", "dir",
                 "--write"]) == 0
    out = capsys.readouterr().out
    assert "fpol diff" in out
    learned = check_file(str(policy)).require()
    ev = Evaluator(dataclasses.replace(learned.policy, mode="enforce"))
    assert [e.text() for e in log.entries if refused(ev, e)] == []

    # Changes only inside the logged directories.
    (tmp_path / "old.fpol").write_text(POLICY)
    old = check_file(str(tmp_path / "old.fpol")).require()
    dirs = {e.path[:-1] for e in log.entries} | {e.to[:-1] for e in log.entries if e.to}
    for d in diff(old.classes, learned.classes).differences:
        assert any(d.path[:len(x)] == x for x in dirs), d.path

    # Enforced, on a fresh tree: the workload runs without a refusal.
    policy.write_text(policy.read_text().replace("mode complain", "mode enforce"))
    src2 = tmp_path / "src2"
    _tree(src2)
    m = _mount(policy, src2, tmp_path, "enforce")
    try:
        _workload(Path(m.mnt))
    finally:
        m.stop()
    assert (src2 / "data" / "out" / "new1.log").read_text() == "new\n"
    shutil.rmtree(src2)
