"""Which rules hold at a path, against each rule read alone.

The evaluator and the class builder both take the rules holding at a node from
compiler/automaton.py `holding`, which looks up a rule of several scope terms by one term
(its "anchor") and interns equal rule sets; so tests that compare the two cannot catch a
fault there. Here every rule is checked on its own terms: a term holds when one of its
patterns matches the whole path (`**` any number of components), a rule holds when all of
its scope terms do and none of its except terms does.
"""

from __future__ import annotations

from functools import lru_cache

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fpol.compiler.automaton import fold_name, fold_part, holding
from fpol.compiler.driver import check
from fpol.compiler.evaluate import Evaluator
from fpol.compiler.paths import ANY, part_matches
from strategies import policies, request_paths

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def pattern_matches(pattern: tuple, path: tuple[bytes, ...], fold: bool) -> bool:
    parts = tuple(fold_part(p, fold) for p in pattern)
    names = tuple(fold_name(n, fold) for n in path)

    @lru_cache(maxsize=None)
    def at(i: int, j: int) -> bool:
        if i == len(parts):
            return j == len(names)
        if parts[i] is ANY:
            return at(i + 1, j) or (j < len(names) and at(i, j + 1))
        return j < len(names) and part_matches(parts[i], names[j], False) and at(i + 1, j + 1)

    return at(0, 0)


def holds_alone(rule, path: tuple[bytes, ...], fold: bool) -> bool:
    def term(t) -> bool:
        return any(pattern_matches(p, path, fold) for p in t.patterns)
    return all(term(t) for t in rule.terms) and not any(term(t) for t in rule.excepts)


@SETTINGS
@given(policies(min_rules=1, max_rules=8, subjects=False),
       st.lists(request_paths(min_depth=0), min_size=1, max_size=6))
def test_the_rules_holding_are_those_that_hold_each_alone(text, paths):
    checked = check(text, "p.fpol")
    assume(checked.ok)
    policy = checked.policy
    ev = Evaluator(policy)
    for path in paths:
        got = [r.index for r in ev.matching(ev.walk(path))]
        want = [r.index for r in policy.rules if holds_alone(r, path, policy.case_insensitive)]
        assert got == want, (path, text)


def test_a_rule_of_two_terms_needs_both_whichever_it_is_looked_up_by():
    """`named` holds all over the tree and `under` only below its path: the rule is looked
    up by its `under` term, and holds only where the `named` one holds too."""
    checked = check(b'default allow\ndeny create named "*.tmp" under /a\n'
                    b'deny write under /a except named "*.keep"\n', "p.fpol").require()
    ev = Evaluator(checked.policy)
    at = {path: [r.index for r in ev.matching(ev.walk(path))]
          for path in [(b"a",), (b"a", b"x.tmp"), (b"b", b"x.tmp"), (b"a", b"x.keep")]}
    assert at == {(b"a",): [1], (b"a", b"x.tmp"): [0, 1], (b"b", b"x.tmp"): [], (b"a", b"x.keep"): []}


def test_equal_rule_sets_are_one_holding():
    checked = check(b"default allow\ndeny write under /a\ndeny read under /a/b\n", "p.fpol").require()
    ev = Evaluator(checked.policy)
    nfa = ev.nfa
    first = holding(checked.policy, nfa.accepted(ev.walk((b"a", b"b"))))
    again = holding(checked.policy, nfa.accepted(ev.walk((b"a", b"b", b"c"))))
    assert first is again and [r.index for r in first.rules] == [0, 1]
    assert first.indexes == frozenset({0, 1})
