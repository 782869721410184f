"""Checks that need the whole automaton: errno/mode ties (errors) and rules that
can never decide anything (warnings), exact because they walk every class.
"""

from __future__ import annotations

import operator
from itertools import chain
from typing import Collection, Sequence

from . import ops
from .classes import RawState
from .decide import Decision, DecisionTable, atom_kinds, decide_table
from .diagnostics import Reporter
from .policy import Policy, Rule
from .subjects import partition

ATOM_INDEX = {a: i for i, a in enumerate(ops.ATOMS)}

# A visit: the decision per atom for one subject class, the rules that apply, a superset
# of their indexes, the subject class.
Visit = tuple[tuple[Decision, ...], Sequence[Rule], frozenset, int]


def lint(policy: Policy, raw: list[RawState], tables: Sequence[DecisionTable],
         reporter: Reporter) -> None:
    """`tables` are the raw states' decision tables. A policy with subject conditions
    (LANGUAGE.md §6) is checked for every subject class: the rules matching a state's
    path that apply to the class decide, exactly as the evaluator decides for a requester
    of that class. (The facts the warnings need are gathered per distinct (rules, table)
    pair, row and decision, and who decides instead of a rule only for the rules that never
    decide, since every rule's decisions at every state cost most; the warnings follow.)"""
    rules = policy.rules
    subjects = partition(policy)
    nsubjects = len(subjects)
    except_used = _excepts_used(policy, raw)
    kinds = atom_kinds(policy)
    # Each (rules holding, table) pair once, by identity (a pair seen again adds nothing).
    holdings = [st.holding for st in raw]
    pairs = dict(zip(zip(map(id, holdings), map(id, tables)), zip(holdings, tables))).values()
    visits: list[Visit] = []  # with subject conditions
    rows: list[tuple[tuple[Decision, ...], int]]
    if nsubjects == 1:
        # Each table is its one row: each once, where first met.
        rows = [(table, 0) for table in {id(table): table for _, table in pairs}.values()]
    else:
        visits = _subject_visits(policy, subjects, pairs)
        # Each row once, where first visited.
        first_seen: dict[int, tuple[tuple[Decision, ...], int]] = {}
        for row, _, _, s in visits:
            first_seen.setdefault(id(row), (row, s))
        rows = list(first_seen.values())
    decided, ties = _decided(rows, kinds)
    _hidden_but_replaceable(policy, [row for row, _ in rows], reporter)
    # The rest is about the rules that never decide (FP101, FP105: few), and only where
    # one of them holds: a rule that decides somewhere holds there.
    undecided = set(range(len(rules))) - decided
    # (table, the undecided rules holding with it), where there are some
    undecided_at = [(table, undecided.intersection(held.indexes)) for held, table in pairs
                    if not undecided.isdisjoint(held.indexes)]
    matched = decided.union(*(here for _, here in undecided_at))
    matched -= {r.index for r in rules if not r.atoms}  # a rule's table has every atom
    # Who decides in their place: (row, the undecided rules applying) for each visit.
    applying_at: Sequence[tuple[tuple[Decision, ...], Collection[int]]]
    if nsubjects == 1:
        applying_at = undecided_at  # the table is the row, and every rule holding applies
    else:
        applying_at = [(row, [r.index for r in applying if r.index in undecided])
                       for row, applying, indexes, _ in visits if not undecided.isdisjoint(indexes)]
    deciders_where_matched = _deciders(applying_at, kinds)

    for tie, (atom, s) in sorted(ties.items()):
        first, *others = (rules[i] for i in tie)
        kind = "errno" if first.action == "deny" else "userspace mode"
        values = ", ".join(sorted({(r.errno or r.mode or "") for r in rules if r.index in tie}))
        code = "FP023" if first.action == "deny" else "FP024"
        who = f", for requests by {subjects.describe(s)}" \
            if any(rules[i].has_subject for i in tie) else ""
        hint = "make one scope more specific, or use one " + kind
        if any(rules[i].has_subject for i in tie):
            hint += " (a rule with a `by` list wins a tie only against one without)"
        reporter.add(code, f"{kind} tie: rules on lines "
                     f"{', '.join(str(rules[i].line) for i in tie)} match the same {ops.atom_op(atom)} "
                     f"requests with equal specificity but different {kind}s ({values}){who}",
                     first.span, hint,
                     related=tuple(("ties with this rule", r.span, r.file) for r in others),
                     file=first.file)

    for r in rules:
        if r.index not in matched:
            reporter.add("FP105", _as(r, "rule matches nothing: its scope (after `except`) is empty"),
                         r.span, "check the paths; an `except` may remove everything", file=r.file)
            continue
        for i, term in enumerate(r.excepts):
            if (r.index, i) not in except_used:
                reporter.add("FP103", _as(r, f"`except {term.text}` removes nothing from this rule"),
                             r.span, "the excepted paths are not in the rule's scope; drop it or fix the path",
                             file=r.file)
        if r.action == "allow" and policy.default.decision == "allow":
            reporter.add("FP102", "allow rule under `default allow` changes nothing", r.span,
                         "allow only matters against `default deny` or `default redirect`; "
                         "to carve out an exception from a deny, use `except`", file=r.file)
            continue
        if r.index not in decided:
            if not any(subjects.applies(r, s) for s in range(nsubjects)):
                continue  # it applies to nobody: FP110 (compiler/analyse.py) says so
            deciders = sorted(deciders_where_matched.get(r.index, ()))
            related = tuple(("decided instead by this rule", rules[i].span, rules[i].file)
                            for i in deciders[:3])
            reporter.add("FP101", _as(r, "rule never decides anything: wherever it matches, "
                         + ("a stricter or more specific rule decides" if deciders else "another rule decides")),
                         r.span, "remove it, or narrow the rule that shadows it", related=related,
                         file=r.file)


def _excepts_used(policy: Policy, raw: list[RawState]) -> set[tuple[int, int]]:
    """(rule index, except term index) for every except term that removes something: it
    holds at some node where all of its rule's scope terms hold."""
    used: set[tuple[int, int]] = set()
    if any(r.excepts for r in policy.rules):
        used.update(*{st.excepts_hit for st in raw})
    return used


def _subject_visits(policy: Policy, subjects, pairs) -> list[Visit]:
    """The visits of a policy with subject conditions: each (rules holding, table) pair
    for every subject class, once per distinct set of rules applying."""
    visits: list[Visit] = []
    seen: set = set()  # the applying rules' indexes done
    for held, table in pairs:
        here = held.rules
        # Where no rule matching here depends on who asks, every subject class is decided
        # alike: one visit does for all.
        relevant = held.indexes & subjects.conditional
        which_done: set[frozenset] = set()  # subject classes with the same rules here
        for s in range(len(subjects) if relevant else 1):
            # The decisions for subject class s: the path's rules that apply to it, which
            # depend only on which of `relevant` apply to s.
            which = relevant & subjects.classes[s].rules
            if which in which_done:
                continue
            which_done.add(which)
            applying = subjects.select(list(here), s)
            key = tuple(r.index for r in applying)
            if key in seen:  # many states share both; what follows depends on nothing else
                continue
            seen.add(key)
            # The class tree's tables hold every subject class's decisions already.
            row = table.for_subject(s) if getattr(table, "nsubjects", 1) == len(subjects) \
                else decide_table(policy, applying)
            visits.append((row, applying, held.indexes, s))
    return visits


def _decided(rows, kinds) -> tuple[set[int], dict[tuple[int, ...], tuple[str, int]]]:
    """The rules that decide or audit somewhere in `rows` ((row, subject class) pairs, in
    visiting order), and each tie with the atom and subject class it is first met at.
    Atoms of one kind have one decision (decide.decide_table), so each kind is read at its
    first atom. Decisions are shared between rows: each is read once."""
    slots = kinds.slot
    # Each row's decision per kind, read in one pass over the rows (a policy has at least
    # two kinds, handle ops and the others, so the getter gives a tuple).
    read = list(chain.from_iterable(map(operator.itemgetter(*slots), [row for row, _ in rows])))
    distinct = dict(zip(map(id, read), read)).values()
    decided: set[int] = set()
    decided.update(*map(operator.attrgetter("rules"), distinct),
                   *map(operator.attrgetter("audit_rules"), distinct))
    ties: dict[tuple[int, ...], tuple[str, int]] = {}
    if any(map(operator.attrgetter("tie"), distinct)):  # an error, so rare: needs the order
        for row, s in rows:
            for k, i in enumerate(slots):
                if row[i].tie:
                    ties.setdefault(row[i].tie, (kinds.atom[k], s))
    return decided, ties


def _deciders(applying_at: Sequence[tuple[tuple[Decision, ...], Collection[int]]], kinds
              ) -> dict[int, set[int]]:
    """For each rule that never decides, the rules deciding where it applies (at every kind
    it selects: it decides none of them). `applying_at`: (row, those rules applying)."""
    slots, of_rule = kinds.slot, kinds.of_rule
    deciders: dict[int, set[int]] = {}
    for row, here in applying_at:
        for i in here:
            for k in of_rule[i]:
                deciders.setdefault(i, set()).update(row[slots[k]].rules)
    return deciders


def _as(rule, message: str) -> str:
    """A rule over a definition with several values is several rules (LANGUAGE.md §7): say
    which of them a message is about."""
    if not rule.expanded:
        return message
    return f"{message} (as `{rule.text}`)"


# Atoms that put a new object at a name. The kernel takes a lookup's ENOENT as absence, so
# after `deny lookup ... with ENOENT` these still reach the name: create opens (and may
# truncate) the hidden object, rename and link replace it, mkdir/mknod/symlink fail with
# EEXIST and so reveal it.
_ONTO_NAME = ("create:w", "create:rw", "mknod", "mkdir", "symlink", "rename:dst", "link:dst")


def _hidden_but_replaceable(policy: Policy, tables: Sequence[tuple[Decision, ...]],
                            reporter: Reporter) -> None:
    """FP106: a node whose lookup is denied with ENOENT while some op onto its name is not
    denied, reported once per deciding rule, naming the ops (exact: every table is seen;
    `tables` are distinct, per subject class for a policy with subject conditions)."""
    lookup, onto = ATOM_INDEX["lookup"], [(a, ATOM_INDEX[a]) for a in _ONTO_NAME]
    open_ops: dict[int, set[str]] = {}
    for table in tables:
        d = table[lookup]
        if d.kind != "deny" or d.errno != "ENOENT" or not d.rules:
            continue
        missing = {ops.atom_op(a) for a, i in onto if table[i].kind != "deny"}
        if missing:
            open_ops.setdefault(d.rules[0], set()).update(missing)
    for ri, missing in sorted(open_ops.items()):
        names = ", ".join(sorted(missing, key=ops.SINGLE_OPS.index))
        reporter.add("FP106", f"names this rule hides from lookup can still be replaced: "
                     f"{names} onto them {'is' if len(missing) == 1 else 'are'} not denied "
                     "(the kernel takes ENOENT as absence)", policy.rules[ri].span,
                     f"deny {names} in the same scope too, e.g. add them to this rule's ops",
                     file=policy.rules[ri].file)
