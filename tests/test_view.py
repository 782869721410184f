"""compiler/view.py, the daemon's view of a compiled policy: what it answers must be what
the evaluator answers, and what it lets the kernel cache must be a plain allow."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from fpol.compiler.driver import check
from fpol.compiler.evaluate import Evaluator, Request
from fpol.compiler.view import PolicyView, plain_allow

from oracles import requesters
from strategies import policies, request_paths

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _view(text: str):
    checked = check(text.encode("utf-8"), "p.fpol")
    if not checked.ok:
        return None, None
    return PolicyView(checked.classes, checked.digest), Evaluator(checked.policy)


@SETTINGS
@given(text=policies(), pairs=st.lists(st.tuples(request_paths(1, 4), request_paths(1, 4)),
                                       min_size=1, max_size=8),
       op=st.sampled_from(["rename", "link"]))
def test_move_verdicts_remembered_per_class_pair_equal_the_evaluator(text, pairs, op):
    # The daemon asks `move` with the classes of both ends; the verdict it remembers for a
    # pair of classes must be the evaluator's for every path pair with those classes.
    view, evaluator = _view(text)
    if view is None:
        return
    for src, dst in pairs + [(d, s) for s, d in pairs]:
        got = view.move(op, src, dst, view.classify(src), view.classify(dst))
        want = evaluator.evaluate(Request(op, src, dst))
        assert got.request == Request(op, src, dst)
        assert (got.decision.kind, got.decision.errno, got.exdev) == \
            (want.decision.kind, want.decision.errno, want.exdev), (src, dst)


@SETTINGS
@given(text=policies(), path=request_paths(1, 5))
def test_what_the_kernel_may_cache_is_a_plain_allow(text, path):
    view, evaluator = _view(text)
    if view is None:
        return
    rule = view.cache(view.classify(path))
    # The kernel's caches answer every user alike: a plain allow for every requester the
    # policy tells apart (subject conditions), not only for uid 0.
    who = requesters(view.tree)
    for op, cached in (("lookup", rule.entries), ("getattr", rule.attributes)):
        assert cached == all(plain_allow(evaluator.evaluate(
            Request(op, path, uid=uid, gid=gid)).decision) for uid, gid in who), op
