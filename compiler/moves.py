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
from itertools import chain
from typing import Callable, Iterator, Optional

from . import ops
from .classes import Class, ClassTree
from .decide import decide
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
    reach = Reach(start)
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
        tables = {id(c.table): c.table for c in tree.classes}.values()  # (fewer than classes)
        rows = {id(r): r for t in tables for r in t.rows}.values()
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
    and every pair it leads to holds; so it fails exactly when a pair whose rows disagree
    can be reached. Decisions alone settle most pairs: when the least strict of d and
    everything below it is at least as strict as the strictest of s and everything below
    it (`_bounds`), no pair below can disagree, so none is walked."""

    def __init__(self, tree: ClassTree):
        self.tree = tree
        self.fold = tree.policy.case_insensitive
        self.product = Product(tree, tree)
        self.alike = alike_slots(tree)
        self.memo: dict[tuple[int, int], bool] = {}
        self.fanned: set[tuple[int, int]] = set()  # (d, t): every child of d ⪰ class t, proven
        self._below: dict[int, int] = {}
        self.floor_memo: dict[tuple[int, int], bool] = {}
        child = operator.itemgetter(1)  # of a (literal or mask, class) entry
        self._targets = [tuple(sorted({c.default, *map(child, c.literals),
                                       *map(child, c.masks)}))
                         if c.literals or c.masks else (c.default,) for c in tree.classes]
        self._vector = self._class_vectors()  # per class
        self._floor, self._ceiling = self._bounds()

    # --- strictness vectors ----------------------------------------------------------
    #
    # A class's strictness per (subject class, group of alike atoms: comparing one atom of
    # a group compares them all) is one int, each strictness k as k one bits in a field of
    # its own. Fields are compared bit by bit, so vector a is at least as strict as b
    # everywhere when b has no bit a lacks (`not b & ~a`), and the pointwise minimum and
    # maximum of two vectors are `a & b` and `a | b`.

    def _class_vectors(self) -> list[int]:
        """Per class, its strictness vector (classes share tables: once per table)."""
        pick = self.alike.pick
        rank = STRICTNESS.__getitem__
        kind = operator.attrgetter("kind")
        width = max(STRICTNESS.values())  # bits per field
        of_kinds: dict[tuple[str, ...], int] = {}  # a row's decisions' kinds -> its fields
        # by identity: classes share table objects, and a table's __hash__ is a call
        of_table: dict[int, int] = {}
        out = []
        for c in self.tree.classes:
            table = c.table
            v = of_table.get(id(table))
            if v is None:
                v = 0
                for row in table.rows:
                    kinds = tuple(map(kind, pick(row)))
                    fields = of_kinds.get(kinds)
                    if fields is None:
                        fields = 0
                        for k in map(rank, kinds):
                            fields = (fields << width) | ((1 << k) - 1)
                        of_kinds[kinds] = fields
                    v = (v << width * len(kinds)) | fields  # (every row has as many)
                of_table[id(table)] = v
            out.append(v)
        return out

    def _bounds(self) -> tuple[list[int], list[int]]:
        """Per class, the pointwise minimum and maximum strictness over it and every class
        below it: a fixed point over the class graph (it has cycles), children first (they
        mostly have the higher ids)."""
        floor = list(self._vector)
        ceiling = list(floor)
        targets = self._targets
        changed = True
        while changed:
            changed = False
            for c in range(len(floor) - 1, -1, -1):
                lo, hi = floor[c], ceiling[c]
                for t in targets[c]:
                    lo &= floor[t]
                    hi |= ceiling[t]
                if lo != floor[c] or hi != ceiling[c]:
                    floor[c], ceiling[c] = lo, hi
                    changed = True
        return floor, ceiling

    # --- the walk --------------------------------------------------------------------

    def at_least_as_strict(self, d_id: int, s_id: int) -> bool:
        """Settled by the bounds or the two rows where they can (most questions: cheaper
        than a memo look-up, so not memoised), else walked (memoised)."""
        if d_id == s_id or not (self._ceiling[s_id] & ~self._floor[d_id]):
            return True
        vector = self._vector
        if vector[s_id] & ~vector[d_id]:  # the rows disagree
            return False
        key = (d_id, s_id)
        known = self.memo.get(key)
        if known is None:
            known = self._walk(key)
        return known

    def _walk(self, start: tuple[int, int]) -> bool:
        """Depth first from `start` (its rows agree, nothing settles it) over the pairs
        nothing settles otherwise: any pair whose rows disagree refutes it; when none does,
        every pair met holds too. A pair's successors are made as they are looked at:
        most walks end at a refutation among the first few (the root against a child of
        it leads to a thousand pairs)."""
        memo, vector, floor, ceiling = self.memo, self._vector, self._floor, self._ceiling
        seen = {start}
        fans: list[tuple[int, int]] = []
        successors = self._follow(*start, fans)
        if successors is None:
            return self._refuted(start, start)
        todo = [successors]  # per pair followed, the pairs it leads to not yet looked at
        while todo:
            for pair in todo[-1]:
                if pair in seen:
                    continue
                seen.add(pair)
                d, s = pair
                if d == s:
                    continue
                known = memo.get(pair)
                if known is True:
                    continue
                if known is False or vector[s] & ~vector[d]:
                    return self._refuted(start, pair)
                if not (ceiling[s] & ~floor[d]):  # settled
                    continue
                successors = self._follow(d, s, fans)
                if successors is None:
                    return self._refuted(start, pair)
                todo.append(successors)
                break
            else:
                todo.pop()
        memo.update(dict.fromkeys(seen, True))
        self.fanned.update(fans)
        return True

    def _refuted(self, start: tuple[int, int], pair: tuple[int, int]) -> bool:
        """The walk from `start` met `pair`, which does not hold: neither does `start`."""
        self.memo[start] = False
        self.memo[pair] = False  # the pair that refutes it (its rows, or those below it)
        return False

    def _follow(self, d: int, s: int,
                fans: list[tuple[int, int]]) -> Optional[Iterator[tuple[int, int]]]:
        """The pairs (d, s) leads to, in the order to look at them; None when it is refuted
        on the way."""
        cd, cs = self.tree.classes[d], self.tree.classes[s]
        fold = self.fold
        if cs.globs or (cs.literals and len(cd.literals) <= 32):
            # s's own names first: where a stricter subtree hides it is usually behind one
            # of them, and they are few (d's names and the glob witnesses are many).
            for n, t in cs.literals:
                if self._refutes(cd.child(n, fold), t):
                    return None
            return self.product.successors(d, s)
        # s's own names first: where a stricter subtree hides, it is usually behind one
        # of them.
        own = [(cd.child(n, fold), t) for n, t in reversed(cs.literals)]
        # Names s does not list take it to its default class: pair that with each of d's
        # children (for a d with many names, this may pair more than the names do, which
        # can only refuse more).
        x = cs.default
        fan = (d, x)
        if fan in self.fanned:
            return iter(own)
        if self._uniform(x):
            # Every node below s's default child is that one class, so each of d's
            # children, and all below them, must be at least as strict as it: compare
            # the pointwise minimum over them instead.
            return iter(own) if self._floor_ok(d, x) else None
        fans.append(fan)
        return chain(own, ((t, x) for t in reversed(self._targets[d])))

    def _refutes(self, d: int, s: int) -> bool:
        """Pair (d, s) is known not to hold, or its own rows say so."""
        if d == s:
            return False
        known = self.memo.get((d, s))
        if known is not None:
            return not known
        return (self._vector[s] & ~self._vector[d]) != 0

    def _uniform(self, cid: int) -> bool:
        """Every descendant of class `cid` is in class `cid`."""
        c = self.tree.classes[cid]
        return not c.literals and not c.globs and c.default == cid

    def _floor_ok(self, d: int, x: int) -> bool:
        """Every class below `d` is at least as strict as the uniform class `x`."""
        key = (d, x)
        ok = self.floor_memo.get(key)
        if ok is None:
            below = self._below.get(d)
            if below is None:
                floor, targets = self._floor, self._targets[d]
                below = floor[targets[0]]
                for t in targets:
                    below &= floor[t]
                self._below[d] = below
            ok = self.floor_memo[key] = not (self._vector[x] & ~below)
        return ok

    def targets(self, c: Class) -> tuple[int, ...]:
        """Every class a child of `c` can be in."""
        return self._targets[c.id]
