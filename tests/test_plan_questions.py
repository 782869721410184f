"""The struct_ops plan asks a namespace question once for ops decided alike everywhere
(compiler/lower.py _same_answers): mknod, mkdir and symlink share create's kind, rmdir and
unlink remove's. Only ops whose atoms have equal decisions in every row may share; a rule
that tells two of them apart anywhere keeps them apart."""

from __future__ import annotations

from fpol.compiler.driver import check
from fpol.compiler.lower import _same_answers, lower


def _classes(text: str):
    checked = check(text.encode(), "t.fpol")
    assert checked.classes is not None
    return checked.classes


def test_ops_a_group_selects_alike_share_their_question():
    tree = _classes("policy t\ndeny create under /srv with EPERM\ndeny delete under /tmp/x\n")
    assert _same_answers([c.table for c in tree.classes]) == {
        "mkdir": "mknod", "symlink": "mknod", "unlink": "rmdir"}


def test_a_rule_that_tells_two_ops_apart_keeps_them_apart():
    tree = _classes("policy t\ndeny mkdir under /srv/a with EPERM\ndeny unlink under /b\n")
    alias = _same_answers([c.table for c in tree.classes])
    assert "mkdir" not in alias and alias.get("symlink") == "mknod"
    assert "unlink" not in alias


def test_shared_questions_keep_one_program_per_member():
    """Ops that share a question still get programs of their own member each."""
    model = lower(_classes("policy t\ndeny create under /srv with EPERM\n"))
    hooks = {p.hook for p in model.programs}
    assert {"mknod_prefilter", "mkdir_prefilter", "symlink_prefilter"} <= hooks
    for inst in model.instances:
        members = [m for m, _ in inst.members]
        assert len(members) == len(set(members))
