"""How the rules that match one (node, atom) combine into one decision (LANGUAGE.md §2).

deny > userspace > allow; among denies the most specific scope picks the errno
(a tie between different errnos is a compile error, reported by compiler/lint.py);
`audit` rules only set the flag; no matching rule means the default, except that
the handle ops (flush, fsync, ...) are never denied or redirected by the default;
`mode complain` turns every deny into allow + audit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Callable, Iterable, Optional, Sequence

from . import ops
from .memo import derived
from .policy import ALLOW, DENY, STRICTNESS, USERSPACE, Policy, Rule


@dataclass(frozen=True)
class Decision:
    kind: str  # allow | deny | userspace
    errno: Optional[str] = None
    mode: Optional[str] = None  # instead | before | after, for userspace
    audit: bool = False
    rules: tuple[int, ...] = ()  # the deciding rules (indexes); () means the default
    audit_rules: tuple[int, ...] = ()
    complained: bool = False  # a deny that complain mode turned into allow + audit
    # Rules that tie at the top specificity with different errnos / modes (an error).
    tie: tuple[int, ...] = ()
    # For a complained decision: the errno the deny would have refused with (its audit
    # line names it), so no later stage has to work it out again.
    complained_errno: Optional[str] = None

    def __hash__(self) -> int:
        # Decision tables (tuples of these) are dictionary keys all through the compiler;
        # computing the field hash once per object keeps that cheap (and reading it back
        # as an attribute is the quickest way there).
        try:
            return self._hash  # type: ignore[attr-defined]
        except AttributeError:
            # hash(int) maps any int into (-2**61, 2**61) where it is the identity, so this
            # is an int that hashes to itself: a row's hash can then be worked out from its
            # decisions' hashes as a tuple of ints (DecisionRow.spread), in C.
            h = hash(hash((self.kind, self.errno, self.mode, self.audit, self.rules,
                           self.audit_rules, self.complained, self.tie, self.complained_errno)))
            object.__setattr__(self, "_hash", h)
            return h

    def __reduce__(self):
        # Without the hash: another process hashes strings differently.
        return (_decision, (self.kind, self.errno, self.mode, self.audit, self.rules,
                            self.audit_rules, self.complained, self.tie, self.complained_errno))

    @property
    def effect(self) -> tuple:
        """What a request sees of the decision, not which rule made it: the semantic
        equality key (kind, errno, userspace mode, audit)."""
        return (self.kind, self.errno, self.mode, self.audit)

    def short(self) -> str:
        """`deny EACCES`, `userspace after`, `allow`, plus `+audit`."""
        text = self.kind
        if self.kind == DENY:
            text += f" {self.errno}"
        elif self.kind == USERSPACE:
            text += f" {self.mode}"
        if self.audit:
            text += " +audit"
        return text


def _decision(kind: str, errno: Optional[str], mode: Optional[str], audit: bool,
              rules: tuple[int, ...], audit_rules: tuple[int, ...], complained: bool,
              tie: tuple[int, ...], complained_errno: Optional[str]) -> Decision:
    """Decision(...) given every field, made without the frozen dataclass's __init__ (an
    object.__setattr__ per field, half the cost of a decision): _decide makes tens of
    thousands. (A field added to Decision is added here too.) Its hash is worked out
    at once, so `_hash` can be read off every decision kind_decider gives."""
    d = object.__new__(Decision)
    # (_hash as Decision.__hash__ makes it: kind_decider's decisions, all made here, have one
    # to read, and no AttributeError is raised to make it later.)
    d.__dict__.update(kind=kind, errno=errno, mode=mode, audit=audit, rules=rules,
                      audit_rules=audit_rules, complained=complained, tie=tie,
                      complained_errno=complained_errno,
                      _hash=hash(hash((kind, errno, mode, audit, rules, audit_rules, complained,
                                       tie, complained_errno))))
    return d


class DecisionRow(tuple):
    """One subject class's decision per atom, in ops.ATOMS order (what decide_table makes).
    Rows key memos all through lowering, and hashing a tuple calls every decision's hash:
    a row hashes once, as the tuple it is (so it equals and finds a plain tuple's entry)."""

    _hash: int

    def __hash__(self) -> int:
        try:
            return self._hash
        except AttributeError:
            h = self._hash = tuple.__hash__(self)
            return h

    @classmethod
    def spread(cls, decided: tuple[Decision, ...], hashes: tuple[int, ...],
               spread: Callable[[Sequence], tuple]) -> "DecisionRow":
        """The row of the decisions per atom kind `decided` (AtomKinds.spread), given their
        hashes, its hash made from those: the tuple's own hash would call a decision's
        __hash__ (Python) per atom. Equal to it, as a decision's hash hashes to itself."""
        row = super().__new__(cls, spread(decided))
        row._hash = hash(spread(hashes))
        return row

    def __reduce__(self):
        return (DecisionRow, (tuple(self),))


NATOMS = len(ops.ATOMS)
ATOM_INDEX = {a: i for i, a in enumerate(ops.ATOMS)}


class DecisionTable(tuple):
    """The decisions of one class: one per (subject class, atom), subject-major, atoms in
    ops.ATOMS order. A policy without subject conditions has one subject class, so its
    tables are one decision per atom. Iterating visits every decision of every subject
    (what "does any decision ..." questions want); `at` and `for_subject` index.

    `rows` keeps each subject class's row as the object it was built from: rows are
    shared between tables (classes.tables interns them), so later stages may work per
    distinct row instead of per subject class."""

    rows: tuple[tuple[Decision, ...], ...]
    _hash: int

    def __new__(cls, per_subject: "Iterable[tuple[Decision, ...]]") -> "DecisionTable":
        rows = tuple([t if isinstance(t, tuple) else tuple(t) for t in per_subject])
        if len(rows) == 1:
            # One subject class: the table is its row, and hashes as the row does (a
            # DecisionRow keeps its hash, which lowering's row memos then find made).
            table = super().__new__(cls, rows[0])
            table._hash = hash(rows[0])
        else:
            table = super().__new__(cls, chain.from_iterable(rows))
            # Tables key dictionaries all through the compiler: hash once (as the tuple it
            # is; decisions cache theirs). Equality stays a tuple's, quick for one same object.
            table._hash = tuple.__hash__(table)
        table.rows = rows
        return table

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        return (DecisionTable, (self.rows,))

    @property
    def nsubjects(self) -> int:
        return len(self.rows)

    def at(self, atom: str, subject: int) -> Decision:
        return self.rows[subject][ATOM_INDEX[atom]]

    def for_subject(self, subject: int) -> tuple[Decision, ...]:
        """The decision per atom for one subject class."""
        return self.rows[subject]

    def per_subject(self) -> list[tuple[Decision, ...]]:
        return list(self.rows)

    def uniform(self) -> bool:
        """Is every subject class decided alike?"""
        first = self.rows[0]
        return all(r is first or r == first for r in self.rows[1:])

    def depends_on_subject(self, atom: str) -> bool:
        i = ATOM_INDEX[atom]
        first = self.rows[0][i]
        return any(r[i] != first for r in self.rows[1:])

    def decisions(self, atom: str) -> list[Decision]:
        """The decision for `atom`, for every subject class."""
        i = ATOM_INDEX[atom]
        return [r[i] for r in self.rows]


def stricter(first: Decision, second: Decision) -> Decision:
    """The stricter of two decisions (deny, then userspace, then allow); the first on a tie.
    A complained decision is a deny that complain mode logs and allows: it ranks as the deny
    it is, so the other end of a two-path op cannot send the request to userspace."""
    return first if _rank_of(first) >= _rank_of(second) else second


def _rank_of(d: Decision) -> int:
    return STRICTNESS[DENY] if d.complained else STRICTNESS[d.kind]


def combine(first: Decision, second: Decision) -> Decision:
    """The two ends of one request (rename, link, copy_file_range): the stricter end's
    decision, audited by every rule that audits either end."""
    combined = stricter(first, second)
    if first.audit or second.audit:
        combined = Decision(combined.kind, combined.errno, combined.mode, True, combined.rules,
                            tuple(sorted(set(first.audit_rules) | set(second.audit_rules))),
                            combined.complained, combined.tie, combined.complained_errno)
    return combined


def _winners(rules: list[Rule], attr: str
             ) -> tuple[tuple[int, ...], Optional[str], tuple[int, ...]]:
    """The rules that win an errno or mode tie, by index, the value they choose, and the
    tie (the winners, if they disagree). The most specific scope wins, then a rule with a
    `by` list over one without (LANGUAGE.md §6)."""
    if len(rules) == 1:  # no contest (the most common case)
        return (rules[0].index,), getattr(rules[0], attr), ()
    specificities = list(map(_SPECIFICITY, rules))
    top = max(specificities)
    if specificities.count(top) == 1:  # one most specific rule (the next most common)
        winner = rules[specificities.index(top)]
        return (winner.index,), getattr(winner, attr), ()
    best = [r for r in rules if r.specificity == top]
    if len(best) > 1:
        if any(r.subjects for r in best):
            best = [r for r in best if r.subjects]
        best.sort(key=_INDEX)
    values = {getattr(r, attr) for r in best}
    winners = tuple([r.index for r in best])
    return winners, getattr(best[0], attr), winners if len(values) > 1 else ()


def decide(policy: Policy, atom: str, matching: Iterable[Rule]) -> Decision:
    """The decision for `atom` on a node where exactly the rules `matching` hold."""
    relevant = [r for r in matching if atom in r.atoms]
    return _decide_selected(policy, atom, relevant, tuple(r.index for r in relevant))


def decide_table(policy: Policy, matching: Iterable[Rule]) -> DecisionRow:
    """The decision for every atom (in ops.ATOMS order) where exactly `matching` hold.
    Atoms the policy's rules never tell apart are decided once (see AtomKinds)."""
    decided = kind_decider(policy)(matching)
    return DecisionRow.spread(decided, tuple(map(hash, decided)), atom_kinds(policy).spread)


def kind_decider(policy: Policy) -> Callable[[Iterable[Rule]], tuple[Decision, ...]]:
    """For one policy: the decision per atom kind where exactly the rules given hold
    (`AtomKinds.spread` makes the row of them: decide_table). The class builder asks it
    once per distinct set of rules holding."""
    def make():
        kinds = atom_kinds(policy)
        nkinds, rule_kinds, rules = len(kinds.atom), kinds.of_rule, policy.rules
        # The memos of _decide_selected, per kind, read here first: most kinds find their
        # decision there, and then no list of rules is made.
        memos = [_memos(policy)[handle] for handle in kinds.handle]

        def decider(matching: Iterable[Rule]) -> tuple[Decision, ...]:
            per_kind: list[list[int]] = [[] for _ in range(nkinds)]
            for r in matching:
                i = r.index
                for k in rule_kinds[i]:
                    per_kind[k].append(i)
            keys = list(map(tuple, per_kind))
            decided: list = list(map(dict.get, memos, keys))
            if not all(decided):  # (decisions are true; `None in` would call their __eq__)
                for k, key in enumerate(keys):
                    if decided[k] is None:
                        decided[k] = _decide_selected(policy, kinds.atom[k],
                                                      [rules[i] for i in key], key)
            return tuple(decided)
        return decider
    return derived(policy, "_kind_decider", make)


@dataclass(frozen=True)
class AtomKinds:
    """Atoms that every rule of a policy selects alike, and that are alike handle ops or
    not, are decided alike everywhere: one kind. A policy's rules use a few op groups, so
    there are far fewer kinds than atoms."""

    atom: tuple[str, ...]  # per kind, its first atom
    handle: tuple[bool, ...]  # per kind, whether its atoms are handle ops
    slot: tuple[int, ...]  # per kind, its first atom's index in ops.ATOMS
    of_atom: tuple[int, ...]  # per atom (ops.ATOMS order), its kind
    of_rule: tuple[tuple[int, ...], ...]  # per rule index, the kinds it selects
    # decisions per kind -> the tuple of them per atom (by of_atom)
    spread: Callable[[Sequence], tuple] = field(compare=False)


def atom_kinds(policy: Policy) -> AtomKinds:
    def make() -> AtomKinds:
        # Rules with one set of atoms select alike: the atoms selected by the same rules
        # are those selected by the same of these groups (they are disjoint and not empty).
        groups: dict[frozenset[str], int] = {}
        group_of_rule = [groups.setdefault(r.atoms, len(groups)) for r in policy.rules]
        ids: dict[tuple, int] = {}
        atom: list[str] = []
        of_atom: list[int] = []
        for a in ops.ATOMS:
            selected_by = tuple([g for atoms, g in groups.items() if a in atoms])
            k = ids.setdefault((a in _HANDLE_ATOMS, selected_by), len(ids))
            if k == len(atom):
                atom.append(a)
            of_atom.append(k)
        of_group = [tuple(sorted({of_atom[ATOM_INDEX[a]] for a in atoms})) for atoms in groups]
        return AtomKinds(tuple(atom), tuple(a in _HANDLE_ATOMS for a in atom),
                         tuple(ATOM_INDEX[a] for a in atom), tuple(of_atom),
                         tuple([of_group[g] for g in group_of_rule]), itemgetter(*of_atom))
    return derived(policy, "_atom_kinds", make)


_INDEX = attrgetter("index")
_SPECIFICITY = attrgetter("specificity")
_HANDLE_ATOMS = frozenset(a for a in ops.ATOMS if ops.is_handle_atom(a))


def _decide_selected(policy: Policy, atom: str, relevant: list, indexes: tuple) -> Decision:
    """The decision for `atom` given the matching rules that select it (in rule order) and
    their indexes."""
    memo = _memos(policy)[atom in _HANDLE_ATOMS]
    d = memo.get(indexes)
    if d is None:
        d = memo[indexes] = _decide(policy, atom, relevant)
    return d


def _memos(policy: Policy) -> tuple[dict[tuple, Decision], dict[tuple, Decision]]:
    """The decisions made, by the indexes of the rules selecting the atom: for atoms that
    are not handle ops, and for those that are. The outcome depends on the atom only
    through these (and large policies repeat them endlessly)."""
    return derived(policy, "_decisions", lambda: ({}, {}))


def _decide(policy: Policy, atom: str, relevant: list) -> Decision:
    audit_rules = tuple(sorted([r.index for r in relevant if r.action == "audit"]))
    errno = mode = None
    tie: tuple[int, ...] = ()
    # The fields are worked out first and the decision made once: making a frozen
    # dataclass's object is what costs here. (The rules of an action are picked only
    # when no stronger action has any.)
    if denies := [r for r in relevant if r.action == "deny"]:
        kind = DENY
        rules, errno, tie = _winners(denies, "errno")
    elif redirects := [r for r in relevant if r.action == "redirect"]:
        kind = USERSPACE
        rules, mode, tie = _winners(redirects, "mode")
    elif allows := [r for r in relevant if r.action == "allow"]:
        kind, rules = ALLOW, tuple(sorted([r.index for r in allows]))
    else:
        rules = ()
        default = policy.default
        if ops.is_handle_atom(atom) or default.decision == ALLOW:
            kind = ALLOW
        elif default.decision == DENY:
            kind, errno = DENY, default.errno
        else:
            kind, mode = USERSPACE, "instead"
    if policy.mode == "complain" and kind == DENY:
        return _decision(ALLOW, None, None, True, rules, audit_rules, True, tie, errno)
    return _decision(kind, errno, mode, bool(audit_rules), rules, audit_rules, False, tie, None)
