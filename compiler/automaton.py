"""The NFA over path components that every scope pattern of a policy is part of: one home
for its positions, its closure over `**`, its step by one name, and which rules hold where
it accepts. The reference evaluator runs it directly (compiler/evaluate.py); the class
builder runs its subset construction over it (compiler/classes.py).

A position is (pattern id, parts matched). Patterns are folded once, when collected, for
`names case-insensitive` policies, and names are folded before they are stepped, so no
comparison folds. Equal patterns of many rules (the same `named` glob, the same `under`
path) are one pattern, with every (rule index, term key) it belongs to; a term key is
("t", i) for a rule's i-th scope term and ("x", i) for its i-th except term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Callable, Iterable, Optional

from .memo import derived
from .paths import ANY, Glob, part_matches
from .policy import Policy, Rule


def fold_part(part, fold: bool):
    if not fold or part is ANY:
        return part
    if isinstance(part, Glob):
        return Glob(part.text.lower())
    return part.lower()


def fold_name(name: bytes, fold: bool) -> bytes:
    return name.lower() if fold else name


@dataclass
class Patterns:
    """Every pattern of every term, flattened: pattern id -> parts, terms of each pattern."""

    parts: list[tuple] = field(default_factory=list)
    terms_of: list[frozenset] = field(default_factory=list)  # (rule index, term key) pairs
    at_any: frozenset = frozenset()  # every position at a `**` part

    def start(self) -> frozenset:
        """Where every pattern stands before any name (closed)."""
        return closure({(pid, 0) for pid in range(len(self.parts))}, self.parts, self.at_any)

    def advance(self, positions: Iterable[tuple[int, int]], name: bytes) -> set:
        """The positions one (folded) name moves to, before closure: a `**` stays, a part
        the name matches advances, every other position dies."""
        parts = self.parts
        out = set()
        for pid, k in positions:
            pattern = parts[pid]
            if k == len(pattern):
                continue
            part = pattern[k]
            if part is ANY:
                out.add((pid, k))
            elif part_matches(part, name, False):
                out.add((pid, k + 1))
        return out

    def step(self, positions: Iterable[tuple[int, int]], name: bytes) -> frozenset:
        return closure(self.advance(positions, name), self.parts, self.at_any)

    def accepted(self, positions: Iterable[tuple[int, int]]) -> frozenset:
        """The (rule index, term key) pairs whose patterns accept at these positions."""
        out: set = set()
        for pid, k in positions:
            if k == len(self.parts[pid]):
                out |= self.terms_of[pid]
        return frozenset(out)

    def next_parts(self, positions: Iterable[tuple[int, int]]) -> tuple[set, set]:
        """The literal names and the glob texts that can move these positions on."""
        literals, globs = set(), set()
        for pid, k in positions:
            pattern = self.parts[pid]
            if k < len(pattern):
                part = pattern[k]
                if isinstance(part, Glob):
                    globs.add(part.text)
                elif part is not ANY:
                    literals.add(part)
        return literals, globs


def collect(policy: Policy) -> Patterns:
    """The policy's patterns as one NFA (folded for case-insensitive policies)."""
    pats = Patterns()
    fold = policy.case_insensitive
    index: dict[tuple, int] = {}
    terms: list[list] = []
    for r, (term_pairs, except_pairs) in zip(policy.rules, _pairs(policy)):
        for pair, term in (*zip(term_pairs, r.terms), *zip(except_pairs, r.excepts)):
            for pattern in term.patterns:
                folded = tuple([fold_part(p, fold) for p in pattern]) if fold else pattern
                pid = index.get(folded)
                if pid is None:
                    pid = index[folded] = len(pats.parts)
                    pats.parts.append(folded)
                    terms.append([])
                terms[pid].append(pair)
    pats.terms_of = [frozenset(t) for t in terms]
    pats.at_any = frozenset((pid, k) for pid, pattern in enumerate(pats.parts)
                            for k, part in enumerate(pattern) if part is ANY)
    return pats


def closure(positions, parts: list[tuple], at_any: Optional[frozenset] = None) -> frozenset:
    """The positions plus every position reached from them by skipping `**` parts.
    `at_any`, when given, is the set of every position at a `**`, so the work is set
    operations over the few positions that can move."""
    if at_any is None:
        at_any = frozenset((pid, k) for pid, pattern in enumerate(parts)
                           for k, part in enumerate(pattern) if part is ANY)
    out = set(positions)
    todo = out & at_any
    while todo:
        todo = {(pid, k + 1) for pid, k in todo} - out
        out |= todo
        todo &= at_any
    return frozenset(out)


@dataclass(frozen=True, eq=False)
class Holding:
    """The rules that hold at a node, in rule order, and their indexes. Within one policy
    equal sets are one object (`holding` interns them), so later stages key by it cheaply."""

    rules: tuple[Rule, ...]
    indexes: frozenset


_first = itemgetter(0)  # a (rule index, term key) pair's rule index


def _anchor(rule: Rule) -> int:
    """Which scope term of a rule of several terms is looked for first: the one that
    holds at the fewest nodes, as far as its patterns tell. A pattern starting with `**`
    (a `named` glob) holds all over the tree, a rooted one only below its path."""
    def rarity(i: int) -> tuple:
        patterns = rule.terms[i].patterns
        rooted = all(p and p[0] is not ANY for p in patterns)
        literal = min((sum(1 for part in p if not isinstance(part, Glob) and part is not ANY)
                       for p in patterns), default=0)
        return (rooted, literal, -i)
    return max(range(len(rule.terms)), key=rarity)


def _pairs(policy: Policy) -> list[tuple[tuple, tuple]]:
    """Each rule's (rule index, term key) pairs: its scope terms', its except terms'. One
    object per pair in a policy, shared by `collect` and `_shapes`, so that sets of them
    compare equal pairs by identity."""
    def make():
        most = max((max(len(r.terms), len(r.excepts)) for r in policy.rules), default=0)
        tkeys = [("t", i) for i in range(most)]
        xkeys = [("x", i) for i in range(most)]
        return [(tuple([(r.index, tkeys[i]) for i in range(len(r.terms))]),
                 tuple([(r.index, xkeys[i]) for i in range(len(r.excepts))]) if r.excepts else ())
                for r in policy.rules]
    return derived(policy, "_pairs", make)


def _shapes(policy: Policy):
    """Per policy, computed once: the rules with no scope (they hold everywhere), each
    rule's scope terms and except terms as (rule, key) pairs, the rules of one scope term
    and no except (they hold exactly where that term does), for every other scoped rule
    the one term it is looked up by (`_anchor`), and the memos."""
    def make():
        pairs = _pairs(policy)
        none: frozenset = frozenset()
        shapes = [(frozenset(t), frozenset(x) if x else none) for t, x in pairs]
        simple = frozenset(t[0] for t, x in pairs if len(t) == 1 and not x)
        anchor_of = {r.index: t[_anchor(r)] for r, (t, x) in zip(policy.rules, pairs)
                     if len(t) > 1 or t and x}
        anchors = frozenset(anchor_of.values())
        unscoped = tuple(r.index for r in policy.rules if not r.terms)
        with_excepts = tuple((r.index, shapes[r.index][0], x)
                             for r, (t, x) in zip(policy.rules, pairs) if x)
        return _Shapes(unscoped, shapes, simple, anchors, anchor_of, with_excepts,
                       {}, {}, {}, {})
    return derived(policy, "_shapes", make)


@dataclass
class _Shapes:
    unscoped: tuple
    shapes: list
    simple: frozenset
    anchors: frozenset
    anchor_of: dict  # rule index -> its anchor pair, for the rules in `anchors`
    with_excepts: tuple  # (rule index, its scope term pairs, its except term pairs)
    by_accepted: dict  # accepted set -> Holding
    by_indexes: dict  # frozenset of rule indexes -> Holding (the interning)
    hits: dict  # accepted set -> excepts hit
    split: dict  # a piece of an accepted set -> (its simple rules, its anchored rules)


def holding(policy: Policy, accepted: frozenset) -> Holding:
    """The rules whose every scope term holds and no except term holds, where exactly the
    (rule, term key) pairs `accepted` hold (their subjects aside). A rule of one term and
    no except holds where its term does; any other rule can hold only where the term it is
    anchored by does, so only those few are checked term by term (`holding_of`)."""
    sh = _shapes(policy)
    out = sh.by_accepted.get(accepted)
    if out is None:
        out = sh.by_accepted[accepted] = holding_of(policy, (accepted,))
    return out


def holding_of(policy: Policy, pieces: tuple, accepted: Optional[frozenset] = None) -> Holding:
    """`holding` where exactly the union of `pieces` (sets of (rule, term key) pairs)
    holds, without making the union (a rule checked term by term is checked against the
    pieces' pairs it asks about; or against `accepted`, the union, when the caller has it):
    the class builder's sets of positions accept the pairs of a few pieces it keeps interned
    (the floating patterns', a sticky set's, each pattern's that ends here), most of them
    shared by many states. What the simple and the anchored rules of a piece are is worked
    out once per piece."""
    return holder(policy)(pieces, accepted)


def holder(policy: Policy) -> Callable[[tuple, Optional[frozenset]], Holding]:
    """`holding_of` for one policy, with its shapes and memos bound once: the class builder
    asks it for every new set of pieces."""
    def make():
        sh = _shapes(policy)
        unscoped, simple, anchors, shapes = sh.unscoped, sh.simple, sh.anchors, sh.shapes
        split, by_indexes, rules = sh.split, sh.by_indexes, policy.rules
        asked = [need | excl for need, excl in shapes]  # per rule, the pairs checked for it

        def holding_of(pieces: tuple, accepted: Optional[frozenset] = None) -> Holding:
            simples = []  # the pieces' simple rules, where they have some
            candidates = list(unscoped)
            for piece in pieces:
                parts = split.get(piece)
                if parts is None:
                    parts = split[piece] = (frozenset(map(_first, piece & simple)),
                                            tuple(map(_first, piece & anchors)))
                if parts[0]:
                    simples.append(parts[0])
                candidates += parts[1]
            found: set = set()
            if candidates:
                if accepted is None:
                    # Of the pairs held, those the candidates ask about do: a piece may be
                    # large, and its union with the others would copy it.
                    wanted = frozenset().union(*map(asked.__getitem__, candidates))
                    accepted = frozenset().union(*[wanted & piece for piece in pieces])
                for ri in candidates:
                    need, excl = shapes[ri]
                    if need <= accepted and accepted.isdisjoint(excl):
                        found.add(ri)
            # (most often one piece has all the rules: its set is taken as it is)
            indexes = simples[0] if len(simples) == 1 and not found \
                else frozenset(found).union(*simples)
            out = by_indexes.get(indexes)
            if out is None:
                out = by_indexes[indexes] = Holding(tuple(map(rules.__getitem__, sorted(indexes))),
                                                    indexes)
            return out
        return holding_of
    return derived(policy, "_holder", make)


def anchors_touched(policy: Policy, terms: frozenset) -> Optional[frozenset]:
    """Where adding the pairs `terms` to an accepted set can change the rules holding or
    the excepts hit: only where it already holds one of the returned pairs, the anchors of
    the rules `terms` belong to (a rule holds, or hits an except, only where its anchor
    holds). None when it can change them anywhere: a rule of one term, an unscoped rule
    or an anchor is among them."""
    sh = _shapes(policy)
    touched = {ri for ri, _ in terms}
    if terms & sh.simple or terms & sh.anchors or any(ri in touched for ri in sh.unscoped):
        return None
    return frozenset(sh.anchor_of[ri] for ri in touched if ri in sh.anchor_of)


def excepts_hit(policy: Policy, accepted: frozenset) -> frozenset:
    """(rule index, except term index) for every except term that holds, where exactly the
    pairs `accepted` hold, of a rule whose scope terms all hold there: the except removes
    something (lint's FP103 reports those that never do)."""
    sh = _shapes(policy)
    if not sh.with_excepts:
        return frozenset()
    out = sh.hits.get(accepted)
    if out is None:
        out = sh.hits[accepted] = frozenset(
            (ri, i) for ri, need, excl in sh.with_excepts if need <= accepted
            for i, x in enumerate(excl) if x in accepted)
    return out


def rules_holding(policy: Policy, accepted: frozenset) -> list[Rule]:
    """`holding`'s rules, as a list in rule order."""
    return list(holding(policy, accepted).rules)


__all__ = ["Holding", "Patterns", "anchors_touched", "closure", "collect", "excepts_hit",
           "fold_name", "fold_part", "holder", "holding", "holding_of", "rules_holding"]
