"""Who is asking (issue 16, LANGUAGE.md §6), checked against the reference evaluator on
generated and example policies:

- the class tree (its subject partition and per-subject decision tables) decides every
  atom as the evaluator does, for every requester the policy tells apart
  (`oracles.requesters`: each subject class, and the first and last ids of every interval
  cell) and for the generated requesters;
- the kernel engine (the check object, through BPF_PROG_TEST_RUN) decides what the
  evaluator decides, or more strictly only for a documented realisation refusal
  (`oracles.agree`): every example case asked again as every such requester, and
  hypothesis-generated policies with subject conditions (tests/strategies.py) on generated
  requests made by generated requesters, each also asked as the interval edges;
- the credential reading of the struct_ops programs (`fpol_whoami`): a thread that took
  filesystem ids with setfsuid/setfsgid (as the daemon does per request,
  runtime/fuse/creds.py) is classified as `tree.subjects.classify(fsuid, fsgid)`.
"""

from __future__ import annotations

import glob
import os
import threading

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fpol.compiler import ops
from fpol.compiler.cases import parse_cases
from fpol.compiler.driver import check, check_file
from fpol.compiler.evaluate import Evaluator, Request

from kernel_support import require_bpf
from oracles import agree, assert_classes_agree, decision_fields, engine_for, requesters
from strategies import policies, request_paths, requester_ids, requests, searching

HERE = os.path.dirname(__file__)
EXAMPLES = sorted(glob.glob(os.path.join(HERE, "..", "examples", "*.fpol")))
SUBJECT_EXAMPLES = [p for p in EXAMPLES if check_file(p).require().policy.has_subjects]

# The budget: the whole suite runs on 2 cores in CI. The property tests of test_fuzz.py,
# test_classes.py and others draw subject conditions too (tests/strategies.py).
# Derandomised in the suite, a fresh search with FPOL_FUZZ_SCALE > 1 (tests/strategies.py).
TREE = searching(15, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                        HealthCheck.data_too_large])
KERNEL = searching(8, TREE)


def _with_subjects(text: str):
    """The checked policy if it is clean and tells requesters apart, else None."""
    checked = check(text.encode("utf-8", "surrogateescape"), "gen.fpol")
    if not checked.ok or len(checked.classes.subjects) < 2:
        return None
    return checked


def _as(req: Request, uid: int, gid: int) -> Request:
    return Request(req.op, req.path, req.to, req.flags, req.mask, uid=uid, gid=gid)


def test_strategies_generate_subject_conditions():
    """Most generated policies that check clean tell requesters apart, with uid and gid
    cuts, ranges, names and `except by`."""
    from fpol.compiler.subjects import partition

    seen = {"clean": 0, "subjects": 0, "uid axis": 0, "gid axis": 0, "range": 0,
            "name": 0, "except by": 0}

    # A measure of the strategies on a fixed sample, like test_fuzz's: always derandomised
    # (a random draw of 40 gave only 4 policies with user or group names).
    @settings(max_examples=40, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(policies(min_rules=2))
    def run(text):
        checked = check(text.encode("utf-8", "surrogateescape"), "gen.fpol", build_classes=False)
        if checked.policy is None:
            return
        seen["clean"] += 1
        part = partition(checked.policy)
        if len(part) > 1:
            seen["subjects"] += 1
            seen["uid axis"] += len(part.uid_starts) > 1
            seen["gid axis"] += len(part.gid_starts) > 1
        items = [s for r in checked.policy.rules for s in r.subjects + r.except_subjects]
        seen["range"] += any(s.low != s.high for s in items)
        seen["name"] += "user " in text or "group " in text
        seen["except by"] += any(r.except_subjects for r in checked.policy.rules)

    run()
    assert seen["subjects"] >= seen["clean"] // 2, seen
    assert min(seen.values()) >= 5, seen


# --- the class tree -----------------------------------------------------------------------

@TREE
@given(text=policies(min_rules=1), paths=st.lists(request_paths(0, 4), min_size=1, max_size=8),
       ids=st.lists(requester_ids(), min_size=1, max_size=6))
def test_generated_subject_policies_class_tree_agrees(text, paths, ids):
    checked = _with_subjects(text)
    assume(checked is not None)
    tree, evaluator = checked.classes, Evaluator(checked.policy)
    for path in paths:
        # every requester the tree tells apart (as test_fuzz.py does too)...
        assert_classes_agree(checked, evaluator, path)
        cls = tree.classify(path)
        for uid, gid in ids:  # and the generated ones, anywhere in the id space
            subject = tree.subjects.classify(uid, gid)
            for atom in ops.ATOMS:
                got, want = cls.decision(atom, subject), evaluator.decision_at(path, atom, uid, gid)
                assert decision_fields(got) == decision_fields(want), (text, path, uid, gid, atom)


# --- the kernel engine -----------------------------------------------------------------------

@pytest.mark.parametrize("path", SUBJECT_EXAMPLES, ids=os.path.basename)
def test_kernel_engine_agrees_on_every_example_case_for_every_requester(path):
    """Each case of the example's table, asked as written and again as every requester the
    policy tells apart."""
    require_bpf()
    checked = check_file(path).require()
    with open(path[:-len(".fpol")] + ".cases", encoding="utf-8") as f:
        cases = parse_cases(f.read())
    evaluator = Evaluator(checked.policy)
    who = requesters(checked.classes)
    assert len(who) >= len(checked.classes.subjects) >= 2
    problems, asked = [], 0
    with engine_for(checked) as engine:
        for case in cases:
            for uid, gid in [(case.request.uid, case.request.gid)] + who:
                req = _as(case.request, uid, gid)
                expected, got = evaluator.evaluate(req), engine.evaluate(req)
                asked += 1
                if agree(expected, got) == "DIFFERENT":
                    problems.append(f"line {case.line} {case.text} as uid {uid} gid {gid}: "
                                    f"evaluator {expected.decision.short()}, "
                                    f"kernel {got.decision.short()}")
    assert not problems, "\n".join(problems[:20])
    assert asked >= len(cases) * 3


@KERNEL
@given(text=policies(min_rules=2), reqs=st.lists(requests(), min_size=80, max_size=80))
def test_generated_subject_policies_agree_in_the_kernel(text, reqs):
    """Generated requests by generated requesters, each also asked as a few requesters
    the policy tells apart (interval edges, in turn)."""
    require_bpf()
    checked = _with_subjects(text)
    assume(checked is not None)
    evaluator = Evaluator(checked.policy)
    who = requesters(checked.classes)
    with engine_for(checked) as engine:
        assert {name for name, _ in engine.report.programs} == {
            "fpol_check", "fpol_hook", "fpol_whoami"}
        for i, req in enumerate(reqs):
            for r in (req, _as(req, *who[i % len(who)]), _as(req, *who[-1 - i % len(who)])):
                expected, got = evaluator.evaluate(r), engine.evaluate(r)
                assert agree(expected, got) != "DIFFERENT", (
                    f"{text!r}\n{r}: evaluator {expected.decision.short()}, "
                    f"kernel {got.decision.short()}")


# --- the credential reading ---------------------------------------------------------------

def _whoami_as(engine, fsuid: int, fsgid: int) -> int:
    """engine.whoami() in a thread that runs with filesystem ids fsuid, fsgid (this thread
    only: setfsuid/setfsgid act per thread, as the daemon relies on)."""
    from fpol.runtime import libc

    out: dict = {}

    def body():
        try:
            libc.set_thread_fsids(fsuid, fsgid)
            try:
                out["subject"] = engine.whoami()
            finally:
                libc.set_thread_fsids(0, 0)
        except BaseException as e:  # reported in the test's thread
            out["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    assert not t.is_alive()
    if "error" in out:
        raise out["error"]
    return out["subject"]


@pytest.mark.parametrize("source", SUBJECT_EXAMPLES + [
    "deny write under /srv by uid 1000-60000 except by gid 50\n"
    "deny read at /etc/shadow except by uid 0, gid 42\n"
    "audit all under /tmp by gid 100-199, uid 7\n"],
    ids=[os.path.basename(p) for p in SUBJECT_EXAMPLES] + ["uid-and-gid-ranges"])
def test_whoami_reads_the_threads_fsuid_and_fsgid(source):
    """The struct_ops programs' subject (bpf_get_current_task_btf, cred->fsuid/fsgid) is the
    class tree's subject class of the calling thread's filesystem ids."""
    require_bpf()
    if os.geteuid() != 0:
        pytest.skip("setfsuid/setfsgid to other ids needs root (CAP_SETUID, CAP_SETGID)")
    checked = (check_file(source) if source.endswith(".fpol") else check(source, "t.fpol")).require()
    part = checked.classes.subjects
    ids = sorted({(u, g) for u, g in requesters(checked.classes)
                  if u < 0xFFFFFFFF and g < 0xFFFFFFFF}
                 | {(0, 0), (33, 33), (34, 34), (1000, 1000), (1000, 4), (1023, 1023),
                    (10123, 10123), (65534, 65534), (60000, 50)})
    with engine_for(checked) as engine:
        # The calling thread as it is (root), then each id pair in its own thread.
        assert engine.whoami() == part.classify(os.getresuid()[0], os.getresgid()[0])
        got = {(u, g): _whoami_as(engine, u, g) for u, g in ids}
    want = {(u, g): part.classify(u, g) for u, g in ids}
    assert got == want
    assert len(set(want.values())) >= 2  # the ids tried tell classes apart
