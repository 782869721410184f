"""Who is asking (LANGUAGE.md §6): the subject partition, the class tables per subject class,
the daemon's view, the struct_ops realisation and `fpol diff` with subjects."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import HealthCheck, given, settings, strategies as st

from fpol.compiler.decide import NATOMS
from fpol.compiler.diff import diff
from fpol.compiler.driver import check
from fpol.compiler.evaluate import Evaluator, Request, parse_path
from fpol.compiler.policy import USERSPACE
from fpol.compiler.subjects import (EVERYONE, ID_LIMIT, SHARED_CACHE_ATOMS, daemon_classes,
                                    partition, realise_subjects, sends_to_daemon)
from fpol.compiler.view import PolicyView, cache_rule

SHARED = """\
policy shared
default allow
deny write under /srv except by uid 0, by gid 4
deny read under /srv/db by uid 1000-60000
audit read under /srv/logs except by uid 0
deny all under /etc by uid 10000-19999
deny lookup under /home/alice except by uid 1000
"""


def _checked(text: str = SHARED, name: str = "shared.fpol"):
    return check(text, name).require()


# --- the partition ------------------------------------------------------------------------

_ids = st.one_of(st.integers(0, 40), st.integers(ID_LIMIT - 3, ID_LIMIT - 1),
                 st.integers(0, ID_LIMIT - 1))
_item = st.tuples(st.sampled_from(["uid", "gid"]), st.integers(0, 30), st.integers(0, 10)).map(
    lambda t: f"{t[0]} {t[1]}" if t[2] == 0 else f"{t[0]} {t[1]}-{t[1] + t[2]}")
_rule = st.tuples(st.sampled_from(["deny write", "deny read", "audit read", "deny all"]),
                  st.sampled_from(["/a", "/a/b", "/c"]),
                  st.lists(_item, min_size=0, max_size=3, unique=True),
                  st.lists(_item, min_size=0, max_size=2, unique=True))


def _text(rules) -> str:
    lines = ["policy p", "default allow"]
    for action, path, by, but in rules:
        line = f"{action} under {path}"
        if by:
            line += " by " + ", ".join(by)
        if but:
            line += " except " + ", ".join("by " + b for b in but)
        lines.append(line)
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(_rule, min_size=1, max_size=6),
       who=st.lists(st.tuples(_ids, _ids), min_size=1, max_size=8))
def test_partition_classifies_every_requester_by_the_rules_that_apply(rules, who):
    result = check(_text(rules), "p.fpol")
    if not result.ok:
        return  # a generated rule may be diagnosed (applies to nobody is a warning only)
    policy = result.policy
    part = partition(policy)
    for uid, gid in who:
        s = part.classify(uid, gid)
        held = {r.index for r in policy.rules if r.has_subject and r.applies_to(uid, gid)}
        assert part.classes[s].rules == held, (uid, gid, s)
        assert all(part.applies(r, s) == r.applies_to(uid, gid) for r in policy.rules)


def test_subject_class_zero_is_root_and_policies_without_subjects_have_one():
    c = _checked()
    assert c.classes.subjects.classify(0, 0) == 0
    plain = _checked("policy p\ndeny write under /a\n", "p.fpol")
    assert plain.classes.subjects is EVERYONE
    assert all(c.table.nsubjects == 1 and len(c.table) == NATOMS for c in plain.classes.classes)


def test_partition_describes_its_classes():
    part = _checked().classes.subjects
    texts = [part.describe(s) for s in range(len(part))]
    assert texts[0] == "uid 0"
    assert any("uid 10000-19999" in t for t in texts)
    assert any("gid 4" in t for t in texts) and any("gid not 4" in t for t in texts)


# --- the daemon's view ----------------------------------------------------------------------

def test_view_decides_per_requester_like_the_evaluator():
    c = _checked()
    view, ev = PolicyView(c.classes), Evaluator(c.policy)
    paths = ["/srv/x", "/srv/db/a", "/srv/logs/l", "/etc/passwd", "/home/alice/x", "/tmp"]
    for uid, gid in [(0, 0), (5, 4), (5, 5), (1000, 100), (15000, 100), (70000, 4), (1000, 4)]:
        subject = view.subject(uid, gid)
        for p in paths:
            cls = view.classify(parse_path(p))
            for op in ("write", "read", "lookup", "getattr", "unlink"):
                want = ev.evaluate(Request(op, parse_path(p), uid=uid, gid=gid)).decision
                got = view.decision(cls, op, subject)
                assert (got.kind, got.errno, got.audit) == (want.kind, want.errno, want.audit), \
                    (p, op, uid, gid)


def test_kernel_caches_nothing_whose_decision_depends_on_who_asks():
    c = _checked()
    view = PolicyView(c.classes)
    etc = view.classify(parse_path("/etc"))
    alice = view.classify(parse_path("/home/alice/x"))
    for cls in (etc, alice):
        rule = view.cache(cls)
        assert not rule.entries and not rule.listing
        assert "depends on who is asking" in rule.why
    # The same lookup allowed for everyone stays cacheable.
    assert view.cache(view.classify(parse_path("/tmp"))).entries
    # Reads that depend on who asks are never passed through (a handle is not asked again).
    assert not view.passthrough(view.classify(parse_path("/srv/db/a")))
    assert view.passthrough(view.classify(parse_path("/tmp/a")))
    # Class-wide questions (what the kernel may do for anyone) hold only if they hold for all.
    assert not view.plain_allow(etc, "lookup") and view.plain_allow(etc, "statfs") is False
    assert cache_rule(c.classes.classes[0].table).entries


def test_moves_are_judged_per_requester():
    c = _checked("policy p\ndeny read under /secret by uid 1000-1999\n", "p.fpol")
    view = PolicyView(c.classes)
    src, dst = parse_path("/secret/f"), parse_path("/open/f")
    scls, dcls = view.classify(src), view.classify(dst)
    # Moving out of /secret gains uid 1000-1999 a read: refused for them, fine for others.
    assert view.move("rename", src, dst, scls, dcls, 1500, 1500).exdev
    assert not view.move("rename", src, dst, scls, dcls, 0, 0).exdev
    assert view.move("rename", src, dst, scls, dcls, 1000, 7).exdev


# --- the struct_ops realisation ----------------------------------------------------------------

def _never_looser(tree, realised) -> None:
    """Every realised decision is the policy's for every subject class, or goes to the
    daemon; never an allow the policy would not give."""
    for c, r in zip(tree.classes, realised.classes):
        for s in range(len(tree.subjects)):
            rs = s if len(realised.subjects) > 1 else 0
            for i in range(NATOMS):
                want, got = c.table[s * NATOMS + i], r.table[rs * NATOMS + i]
                assert got == want or got.kind == USERSPACE, (c.id, s, i, want, got)


def test_kernel_realisation_sends_shared_cache_ops_that_depend_on_who_asks_to_the_daemon():
    tree = _checked().classes
    realised = realise_subjects(tree, "kernel")
    assert len(realised.subjects) == len(tree.subjects)
    _never_looser(tree, realised)
    moved = 0
    for c, r in zip(tree.classes, realised.classes):
        for atom in SHARED_CACHE_ATOMS:
            if c.table.depends_on_subject(atom):
                assert all(d.kind == USERSPACE and d.mode == "instead" for d in r.decisions(atom))
                assert r.decisions(atom)[0].rules  # names the rule that made it depend
                moved += 1
        # other atoms keep deciding per subject in the programs
        assert r.decisions("write") == c.decisions("write")
    assert moved
    assert sends_to_daemon(tree, "kernel")


def test_daemon_realisation_has_one_subject_class():
    tree = _checked().classes
    realised = realise_subjects(tree, "daemon")
    assert len(realised.subjects) == 1
    assert all(c.table.nsubjects == 1 for c in realised.classes)
    _never_looser(tree, realised)
    assert daemon_classes(tree) == sum(1 for c in tree.classes if not c.table.uniform())
    plain = _checked("policy p\ndeny write under /a\n", "p.fpol").classes
    assert realise_subjects(plain, "daemon") is plain and not sends_to_daemon(plain, "kernel")


def test_struct_ops_objects_build_and_open_for_both_credentials(tmp_path):
    from fpol.runtime import libbpf
    from fpol.runtime.objects import build

    c = _checked()
    for credentials in ("kernel", "daemon"):
        built = build(c, "struct_ops", credentials=credentials)
        reads = "bpf_get_current_task_btf" in built.source
        assert reads == (credentials == "kernel")
        with libbpf.BpfObject(built.path) as obj:
            assert any(p.name.startswith("fpol_") for p in obj.programs())


def test_cli_check_and_compile_say_how_subjects_are_realised(tmp_path):
    policy = tmp_path / "shared.fpol"
    policy.write_text(SHARED)
    out = subprocess.run([sys.executable, "-m", "fpol", "check", str(policy)],
                         capture_output=True, text=True, check=True).stdout
    assert "subject classes" in out and "--credentials daemon" in out
    for credentials in ("kernel", "daemon"):
        r = subprocess.run([sys.executable, "-m", "fpol", "compile", str(policy),
                            "--credentials", credentials, "-o", str(tmp_path / f"{credentials}.bpf.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / f"{credentials}.bpf.o").exists()


# --- fpol diff --------------------------------------------------------------------------------

def test_diff_finds_a_difference_only_one_requester_sees():
    old = _checked("policy p\ndeny write under /srv\n", "old.fpol").classes
    new = _checked("policy p\ndeny write under /srv except by uid 5\n", "new.fpol").classes
    result = diff(old, new)
    assert not result.equivalent
    assert {who for d in result.differences for who in d.requesters} == {(5, 0)}
    assert all(d.new.kind == "allow" for d in result.differences)
    req, _ = result.differences[0].request()
    assert (req.uid, req.gid) == (5, 0)


def test_diff_of_two_spellings_of_one_subject_list_is_empty():
    a = _checked("policy p\ndeny write under /srv by uid 5, uid 7-9\n", "a.fpol").classes
    b = _checked("policy p\ndeny write under /srv by uid 7-9, uid 5\n", "b.fpol").classes
    assert diff(a, b).equivalent
    c = _checked("policy p\ndeny write under /srv by uid 5-9\n", "c.fpol").classes
    result = diff(a, c)
    assert {who for d in result.differences for who in d.requesters} == {(6, 0)}
