"""Checks that need the whole automaton: errno/mode ties (errors) and rules that
can never decide anything (warnings), exact because they walk every class.
"""

from __future__ import annotations

from typing import Sequence

from . import ops
from .automaton import excepts_hit
from .classes import RawState
from .decide import Decision, DecisionTable, atom_kinds, decide_table
from .diagnostics import Reporter
from .policy import Policy, Rule
from .subjects import partition

ATOM_INDEX = {a: i for i, a in enumerate(ops.ATOMS)}


def lint(policy: Policy, raw: list[RawState], tables: Sequence[DecisionTable],
         reporter: Reporter) -> None:
    """`tables` are the raw states' decision tables. A policy with subject conditions
    (LANGUAGE.md §6) is checked for every subject class: the rules matching a state's
    path that apply to the class decide, exactly as the evaluator decides for a requester
    of that class. (One pass over the states gathers every fact the warnings need, and
    the warnings follow; it is long because the facts are many, not because it branches.)"""
    rules = policy.rules
    subjects = partition(policy)
    nsubjects = len(subjects)
    matched: set[int] = set()
    decided: set[int] = set()
    deciders_where_matched: dict[int, set[int]] = {}
    ties: dict[tuple[int, ...], tuple[str, int]] = {}
    except_used = _excepts_used(policy, raw)
    kinds = atom_kinds(policy)
    seen: set = set()  # (table, matching rules) pairs done
    subject_tables: dict[tuple[int, ...], tuple[Decision, ...]] = {}
    for held, table in dict.fromkeys((st.holding, table) for st, table in zip(raw, tables)):
        here = held.rules
        for r in here:
            if r.atoms:  # the table has every atom
                matched.add(r.index)
        # Where no rule matching here depends on who asks, every subject class is decided
        # alike: one visit does for all.
        relevant = held.indexes & subjects.conditional
        alike = nsubjects == 1 or not relevant
        which_done: set[frozenset] = set()  # subject classes with the same rules here
        for s in range(1 if alike else nsubjects):
            key: tuple
            if nsubjects == 1:
                applying: Sequence[Rule] = here
            else:
                # The decisions for subject class s: the path's rules that apply to it,
                # which depend only on which of `relevant` apply to s.
                which = relevant & subjects.classes[s].rules
                if which in which_done:
                    continue
                which_done.add(which)
                applying = subjects.select(list(here), s)
                key = tuple(r.index for r in applying)
                if key in seen:  # many states share both; what follows depends on nothing else
                    continue
                seen.add(key)
            row: tuple[Decision, ...] = table
            if nsubjects > 1:
                # The class tree's tables hold every subject class's decisions already.
                row = table.for_subject(s) if getattr(table, "nsubjects", 1) == nsubjects \
                    else decide_table(policy, applying)
                subject_tables[key] = row
            _visit(row, applying, s, decided, ties, deciders_where_matched, kinds)

    _hidden_but_replaceable(policy, tables if nsubjects == 1 else list(subject_tables.values()),
                            reporter)

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
        for accepted in {st.accepted_terms for st in raw}:
            used |= excepts_hit(policy, accepted)
    return used


def _visit(table, applying, subject: int, decided: set, ties: dict,
           deciders_where_matched: dict, kinds) -> None:
    """What one decision table says: the rules that decide, ties, and for each rule that
    applies here, the rules that decide in its place. Atoms of one kind have one decision
    (decide.decide_table), so each kind is read at its first atom."""
    slots = kinds.slot
    for k, i in enumerate(slots):
        d = table[i]
        if d.tie:
            ties.setdefault(d.tie, (kinds.atom[k], subject))
        decided.update(d.rules)
        decided.update(d.audit_rules)
    of_rule = kinds.of_rule
    for r in applying:
        for k in of_rule[r.index]:
            d = table[slots[k]]
            if r.index not in d.rules:
                deciders_where_matched.setdefault(r.index, set()).update(d.rules)


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
    denied, reported once per deciding rule, naming the ops (exact: every table is seen)."""
    lookup, onto = ATOM_INDEX["lookup"], [(a, ATOM_INDEX[a]) for a in _ONTO_NAME]
    # Per subject class for a policy with subject conditions (the caller's tables then).
    open_ops: dict[int, set[str]] = {}
    for table in dict.fromkeys(tables):  # each distinct table once
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
