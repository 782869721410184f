"""No gain by moving (LANGUAGE.md §2): a rename or link is refused with EXDEV when the
object, or anything below it, would be judged more loosely at its destination than where
it is, for the same requester. Callers fall back to copy and delete, which the
destination's own rules judge. One meaning, in two forms:

- `gain`: the reference form, over the evaluator's NFA positions of the two paths,
  walked together over every name the patterns can tell apart (product.Reach, breadth
  first, as the class-tree walks). The evaluator (and so the
  daemon's PolicyView.move) decides with it.
- `Strictness`: the same relation between two classes of a class tree, for the generated
  code: whether a new object or a moved one may keep the class (the fuse-bpf instance) it
  would inherit (lower.py). Decision tables hold one decision per subject class and atom,
  so comparing them pointwise compares the same requester at both ends.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Optional

from . import ops
from .classes import Class, ClassTree
from .decide import DecisionTable, decide
from .policy import STRICTNESS
from .memo import derived
from .product import Product, Reach


def gain(evaluator, src: tuple[bytes, ...], dst: tuple[bytes, ...], subtree: bool,
         uid: int = 0, gid: int = 0) -> Optional[tuple[str, tuple[bytes, ...], Optional[int]]]:
    """Where the destination is looser than the source for requester `uid`, `gid`:
    (atom, suffix, the source's deciding rule) or None.

    For a rename the object may be a directory, so every descendant counts: the two
    position sets are walked together over every name the patterns can tell apart
    (literals, one witness per realisable glob combination, any other name)."""
    policy = evaluator.policy
    start = (evaluator.walk(src), evaluator.walk(dst))
    suffixes: dict[tuple[frozenset, frozenset], tuple[bytes, ...]] = {start: ()}
    reach = Reach(start, breadth_first=True)
    for ps, pd in reach:
        suffix = suffixes[(ps, pd)]
        rs = [r for r in evaluator.matching(ps) if r.applies_to(uid, gid)]
        rd = [r for r in evaluator.matching(pd) if r.applies_to(uid, gid)]
        for atom in ops.ATOMS:
            a, b = decide(policy, atom, rs), decide(policy, atom, rd)
            if STRICTNESS[b.kind] < STRICTNESS[a.kind]:
                return atom, suffix, (a.rules[0] if a.rules else None)
        if not subtree:
            return None
        for name in evaluator.names(ps | pd):
            pair = (evaluator.step(ps, name), evaluator.step(pd, name))
            if reach.add(pair):
                suffixes[pair] = suffix + (name,)
    return None


@dataclass(frozen=True)
class AlikeSlots:
    """The slots (atoms) of a tree's rows grouped where every row of the tree has the same
    decision object: a policy's rules tell few groups of atoms apart (decide.atom_kinds),
    so what is worked out per decision of a row is worked out once per group. Groups are
    in order of their first slot."""

    first: tuple[int, ...]  # per group, its first slot
    group_of: tuple[int, ...]  # per slot, its group
    slots: tuple[tuple[int, ...], ...]  # per group, its slots
    pick: Callable[[tuple], tuple]  # a row -> its decision per group


def alike_slots(tree: ClassTree) -> AlikeSlots:
    """AlikeSlots of every row of `tree` (memoised on it). Only the tree's rows may be
    picked (or, with one subject class, its tables: the table is its one row)."""
    def make() -> AlikeSlots:
        rows = {id(r): r for c in tree.classes for r in c.table.rows}.values()
        columns = list(zip(*rows))
        groups: list[list[int]] = []
        for i, column in enumerate(columns):
            # by identity: equal decisions are mostly one object, and __eq__ is slow
            same = next((g for g in groups if all(map(operator.is_, columns[g[0]], column))),
                        None)
            if same is None:
                groups.append([i])
            else:
                same.append(i)
        group_of = [0] * len(columns)
        for n, g in enumerate(groups):
            for i in g:
                group_of[i] = n
        first = tuple(g[0] for g in groups)
        # (one group: slot 0 starts it; a slice keeps the result a tuple)
        pick = operator.itemgetter(*first) if len(first) > 1 else operator.itemgetter(slice(0, 1))
        return AlikeSlots(first, tuple(group_of), tuple(map(tuple, groups)), pick)
    return derived(tree, "_alike_slots", make)


class Strictness:
    """`at_least_as_strict(d, s)`: every node under d is judged at least as strictly as the
    node at the same relative path under s, for every atom (the relation moves need).

    It is a greatest fixed point over the pairs of classes the same names reach
    (compiler/product.py): a pair holds when d's decisions are at least as strict as s's
    and every pair it leads to holds. Decisions alone settle most pairs: when the least
    strict of d and everything below it is at least as strict as the strictest of s and
    everything below it (`_settled`), no pair below can disagree, so none is walked."""

    def __init__(self, tree: ClassTree):
        self.tree = tree
        self.fold = tree.policy.case_insensitive
        self.product = Product(tree, tree)
        self.alike = alike_slots(tree)
        self.memo: dict[tuple[int, int], bool] = {}
        self.rows: dict[tuple[int, int], bool] = {}  # vector a ⪰ vector b, by vector ids
        self.fanned: set[tuple[int, int]] = set()  # (d, t): every child of d ⪰ class t, proven
        self._targets: dict[int, tuple[int, ...]] = {}
        self._vectors: dict[tuple, int] = {}
        self._vector_of: dict[int, int] = {}
        self._vector_by_id: dict[int, tuple] = {}
        self._vector_of_table: dict[DecisionTable, int] = {}  # (tables hash once)
        self._meets: dict[tuple[int, int, bool], int] = {}
        # A class's vector is one row vector (strictness per group of alike atoms) per
        # subject class; row vectors are few and compared pairwise once (they are what a
        # vector's id names).
        self._row_vectors: dict[tuple, int] = {}
        self._row_vector_by_id: list[tuple] = []
        self._row_ge: dict[tuple[int, int], bool] = {}
        self._row_meets: dict[tuple[int, int, bool], int] = {}
        self._bounds: Optional[tuple[list[int], list[int]]] = None
        self._below: dict[int, int] = {}
        self.floor_memo: dict[tuple[int, int], bool] = {}

    # --- strictness vectors ----------------------------------------------------------

    def _strictness(self, c: Class) -> int:
        """An id for the class's vector of strictness per (subject class, atom): a tuple of
        row vector ids, one per subject class (few distinct ones exist)."""
        v = self._vector_of.get(c.id)
        if v is None:
            v = self._vector_of_table.get(c.table)
            if v is None:
                v = self._vector_of_table[c.table] = self._vector_id(
                    tuple([self._row_vector(r) for r in c.table.rows]))
            self._vector_of[c.id] = v
        return v

    def _row_vector(self, row: tuple) -> int:
        """The id of a row's strictness per group of alike atoms (comparing those compares
        every atom: the others repeat them). Made afresh: quicker than hashing the row."""
        return self._row_id(tuple([STRICTNESS[d.kind] for d in self.alike.pick(row)]))

    def _row_id(self, vec: tuple) -> int:
        n = self._row_vectors.get(vec)
        if n is None:
            n = self._row_vectors[vec] = len(self._row_vector_by_id)
            self._row_vector_by_id.append(vec)
        return n

    def _ge(self, a: int, b: int) -> bool:
        """Row vector a is at least as strict as row vector b, atom by atom."""
        if a == b:
            return True
        ok = self._row_ge.get((a, b))
        if ok is None:
            va, vb = self._row_vector_by_id[a], self._row_vector_by_id[b]
            ok = self._row_ge[(a, b)] = all(x >= y for x, y in zip(va, vb))
        return ok

    def _row_meet(self, a: int, b: int, low: bool) -> int:
        """The pointwise minimum (`low`) or maximum of two row vectors, by id."""
        if a == b:
            return a
        key = (a, b, low) if a < b else (b, a, low)
        m = self._row_meets.get(key)
        if m is None:
            va, vb = self._row_vector_by_id[a], self._row_vector_by_id[b]
            m = self._row_meets[key] = self._row_id(
                tuple(map(min, va, vb)) if low else tuple(map(max, va, vb)))
        return m

    def _vector_id(self, vec: tuple) -> int:
        v = self._vectors.setdefault(vec, len(self._vectors))
        self._vector_by_id[v] = vec
        return v

    def _meet(self, a: int, b: int, low: bool = True) -> int:
        """The pointwise minimum (`low`) or maximum of two strictness vectors, by id."""
        if a == b:
            return a
        key = (a, b, low) if a < b else (b, a, low)
        m = self._meets.get(key)
        if m is None:
            va, vb = self._vector_by_id[a], self._vector_by_id[b]
            m = self._meets[key] = self._vector_id(tuple(self._row_meet(x, y, low)
                                                         for x, y in zip(va, vb)))
        return m

    def _vector_ge(self, a: int, b: int) -> bool:
        """Strictness vector a is at least as strict as b, everywhere (by ids)."""
        if a == b:
            return True
        ok = self.rows.get((a, b))
        if ok is None:
            va, vb = self._vector_by_id[a], self._vector_by_id[b]
            ok = self.rows[(a, b)] = all(self._ge(x, y) for x, y in zip(va, vb))
        return ok

    def _row_ok(self, d: Class, s: Class) -> bool:
        return self._vector_ge(self._strictness(d), self._strictness(s))

    def _bounds_of(self) -> tuple[list[int], list[int]]:
        """Per class, the pointwise minimum and maximum strictness over it and every class
        below it (as vector ids): a fixed point over the class graph (it has cycles),
        children first (they mostly have the higher ids)."""
        if self._bounds is None:
            classes = self.tree.classes
            floor = [self._strictness(c) for c in classes]
            ceiling = list(floor)
            targets = [self.targets(c) for c in classes]
            meet = self._meet
            changed = True
            while changed:
                changed = False
                for c in range(len(classes) - 1, -1, -1):
                    lo, hi = floor[c], ceiling[c]
                    for t in targets[c]:
                        if floor[t] != lo:  # (mostly equal: no call)
                            lo = meet(lo, floor[t])
                        if ceiling[t] != hi:
                            hi = meet(hi, ceiling[t], False)
                    if lo != floor[c] or hi != ceiling[c]:
                        floor[c], ceiling[c] = lo, hi
                        changed = True
            self._bounds = floor, ceiling
        return self._bounds

    def _settled(self, d: int, s: int) -> bool:
        """Every class below d (d too) is at least as strict as every class below s (s
        too): every pair the walk from (d, s) could reach holds."""
        bounds = self._bounds or self._bounds_of()
        return self._vector_ge(bounds[0][d], bounds[1][s])

    # --- the walk --------------------------------------------------------------------

    def at_least_as_strict(self, d_id: int, s_id: int) -> bool:
        """A greatest fixed point: explore the pairs reachable by common names; any pair
        whose rows disagree refutes it. When none does, every pair explored holds too."""
        key = (d_id, s_id)
        known = self.memo.get(key)
        if known is not None:
            return known
        if d_id == s_id or self._settled(d_id, s_id):
            self.memo[key] = True
            return True
        reach = Reach(key)
        fans: list[tuple[int, int]] = []
        refuted = None
        for pair in reach:
            d, s = pair
            if d == s:
                continue
            known = self.memo.get(pair)
            if known is True:
                continue
            if known is False or not self._row_ok(self.tree.classes[d], self.tree.classes[s]):
                refuted = pair
                break
            if self._settled(d, s):
                continue
            if not self._follow(reach, d, s, fans):
                refuted = pair
                break
        if refuted is None:
            for pair in reach.seen:
                self.memo[pair] = True
            self.fanned.update(fans)
            return True
        self.memo[key] = False
        self.memo[refuted] = False  # the pair that refutes it (its rows, or those below it)
        return False

    def _follow(self, reach: Reach, d: int, s: int, fans: list[tuple[int, int]]) -> bool:
        """Add the pairs (d, s) leads to; False when it is refuted on the way."""
        cd, cs = self.tree.classes[d], self.tree.classes[s]
        fold = self.fold
        if cs.globs or (cs.literals and len(cd.literals) <= 32):
            # s's own names first: where a stricter subtree hides it is usually behind one
            # of them, and they are few (d's names and the glob witnesses are many).
            if any(self._refutes((cd.child(n, fold), t)) for n, t in cs.literals):
                return False
            reach.follow(self.product.successors(d, s))
            return True
        # Names s does not list take it to its default class: pair that with each of d's
        # children (for a d with many names, this may pair more than the names do, which
        # can only refuse more), then s's own names.
        fan = (d, cs.default)
        if fan not in self.fanned:
            if self._uniform(cs.default):
                # Every node below s's default child is that one class, so each of d's
                # children, and all below them, must be at least as strict as it: compare
                # the pointwise minimum over them instead.
                if not self._floor_ok(cd, cs.default):
                    return False
            else:
                fans.append(fan)
                reach.follow([(t, cs.default) for t in self.targets(cd)])
        # s's own names last, so they are explored first: where a stricter subtree
        # hides, it is usually behind one of them.
        reach.follow([(cd.child(n, fold), t) for n, t in cs.literals])
        return True

    def _refutes(self, pair: tuple[int, int]) -> bool:
        """Pair (d, s) is known not to hold, or its own rows say so."""
        d, s = pair
        if d == s:
            return False
        known = self.memo.get(pair)
        if known is not None:
            return not known
        return not self._row_ok(self.tree.classes[d], self.tree.classes[s])

    def _uniform(self, cid: int) -> bool:
        """Every descendant of class `cid` is in class `cid`."""
        c = self.tree.classes[cid]
        return not c.literals and not c.globs and c.default == cid

    def _floor_ok(self, d: Class, x: int) -> bool:
        """Every class below `d` is at least as strict as the uniform class `x`."""
        key = (d.id, x)
        ok = self.floor_memo.get(key)
        if ok is None:
            floors = self._bounds_of()[0]
            below = self._below.get(d.id)
            if below is None:
                below = floors[self.targets(d)[0]]
                for t in self.targets(d):
                    below = self._meet(below, floors[t])
                self._below[d.id] = below
            ok = self.floor_memo[key] = self._vector_ge(below, self._strictness(self.tree.classes[x]))
        return ok

    def targets(self, c: Class) -> tuple[int, ...]:
        """Every class a child of `c` can be in."""
        t = self._targets.get(c.id)
        if t is None:
            t = self._targets[c.id] = tuple(sorted({c.default, *[x for _, x in c.literals],
                                                    *[x for _, x in c.masks]}))
        return t
