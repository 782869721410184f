"""No gain by moving (LANGUAGE.md §2): a rename or link is refused with EXDEV when the
object, or anything below it, would be judged more loosely at its destination than where
it is, for the same requester. Callers fall back to copy and delete, which the
destination's own rules judge. One meaning, in two forms:

- `gain`: the reference form, over the evaluator's NFA positions of the two paths,
  walked together over every name the patterns can tell apart. The evaluator (and so the
  daemon's PolicyView.move) decides with it.
- `Strictness`: the same relation between two classes of a class tree, for the generated
  code: whether a new object or a moved one may keep the class (the fuse-bpf instance) it
  would inherit (lower.py). Decision tables hold one decision per subject class and atom,
  so comparing them pointwise compares the same requester at both ends.
"""

from __future__ import annotations

from typing import Optional

from . import ops
from .classes import Class, ClassTree, realisable_masks
from .decide import decide
from .paths import Glob, glob_combinations
from .policy import STRICTNESS


def gain(evaluator, src: tuple[bytes, ...], dst: tuple[bytes, ...], subtree: bool,
         uid: int = 0, gid: int = 0) -> Optional[tuple[str, tuple[bytes, ...], Optional[int]]]:
    """Where the destination is looser than the source for requester `uid`, `gid`:
    (atom, suffix, the source's deciding rule) or None.

    For a rename the object may be a directory, so every descendant counts: the two
    position sets are walked together over every name the patterns can tell apart
    (literals, one witness per realisable glob combination, any other name)."""
    policy = evaluator.policy
    seen = set()
    frontier: list[tuple[frozenset, frozenset, tuple[bytes, ...]]] = [
        (evaluator.walk(src), evaluator.walk(dst), ())]
    while frontier:
        ps, pd, suffix = frontier.pop(0)
        if (ps, pd) in seen:
            continue
        seen.add((ps, pd))
        rs = [r for r in evaluator.matching(ps) if r.applies_to(uid, gid)]
        rd = [r for r in evaluator.matching(pd) if r.applies_to(uid, gid)]
        for atom in ops.ATOMS:
            a, b = decide(policy, atom, rs), decide(policy, atom, rd)
            if STRICTNESS[b.kind] < STRICTNESS[a.kind]:
                return atom, suffix, (a.rules[0] if a.rules else None)
        if not subtree:
            return None
        for name in evaluator.names(ps | pd):
            frontier.append((evaluator.step(ps, name), evaluator.step(pd, name), suffix + (name,)))
    return None


class Strictness:
    """`at_least_as_strict(d, s)`: every node under d is judged at least as strictly as the
    node at the same relative path under s, for every atom (the relation moves need)."""

    def __init__(self, tree: ClassTree):
        self.tree = tree
        self.fold = tree.policy.case_insensitive
        self.memo: dict[tuple[int, int], bool] = {}
        self.rows: dict[tuple[int, int], bool] = {}  # by decision table identity
        self.fanned: set[tuple[int, int]] = set()  # (d, t): every child of d ⪰ class t, proven
        self._targets: dict[int, tuple[int, ...]] = {}
        self._vectors: dict[tuple, int] = {}
        self._vector_of: dict[int, int] = {}
        self._vector_by_id: dict[int, tuple] = {}
        self._vector_of_table: dict[int, tuple[tuple, int]] = {}
        self._mins: dict[tuple[int, int], int] = {}
        # A class's vector is one row vector (strictness per atom) per subject class; row
        # vectors are few and compared pairwise once (they are what a vector's id names).
        self._row_vectors: dict[tuple, int] = {}
        self._row_vector_by_id: list[tuple] = []
        self._row_vector_of: dict[int, tuple[tuple, int]] = {}  # by row identity
        self._row_ge: dict[tuple[int, int], bool] = {}
        self._row_min: dict[tuple[int, int], int] = {}
        self._floor: Optional[list[int]] = None
        self._below: dict[int, int] = {}
        self.floor_memo: dict[tuple[int, int], bool] = {}

    def _strictness(self, c: Class) -> int:
        """An id for the class's vector of strictness per (subject class, atom): a tuple of
        row vector ids, one per subject class (few distinct ones exist)."""
        v = self._vector_of.get(c.id)
        if v is None:
            by_table = self._vector_of_table.get(id(c.table))  # tables are interned
            if by_table is None or by_table[0] is not c.table:
                by_table = self._vector_of_table[id(c.table)] = (
                    c.table, self._vector_id(tuple(self._row_vector(r) for r in c.table.rows)))
            v = self._vector_of[c.id] = by_table[1]
        return v

    def _row_vector(self, row: tuple) -> int:
        """The id of a row's strictness per atom (rows are interned: keyed by identity)."""
        hit = self._row_vector_of.get(id(row))
        if hit is None or hit[0] is not row:
            vec = tuple(STRICTNESS[d.kind] for d in row)
            n = self._row_vectors.get(vec)
            if n is None:
                n = self._row_vectors[vec] = len(self._row_vector_by_id)
                self._row_vector_by_id.append(vec)
            hit = self._row_vector_of[id(row)] = (row, n)  # keeps row alive: ids stay unique
        return hit[1]

    def _ge(self, a: int, b: int) -> bool:
        """Row vector a is at least as strict as row vector b, atom by atom."""
        if a == b:
            return True
        ok = self._row_ge.get((a, b))
        if ok is None:
            va, vb = self._row_vector_by_id[a], self._row_vector_by_id[b]
            ok = self._row_ge[(a, b)] = all(x >= y for x, y in zip(va, vb))
        return ok

    def _min_row(self, a: int, b: int) -> int:
        if a == b:
            return a
        key = (a, b) if a < b else (b, a)
        m = self._row_min.get(key)
        if m is None:
            va, vb = self._row_vector_by_id[a], self._row_vector_by_id[b]
            vec = tuple(min(x, y) for x, y in zip(va, vb))
            m = self._row_vectors.get(vec)
            if m is None:
                m = self._row_vectors[vec] = len(self._row_vector_by_id)
                self._row_vector_by_id.append(vec)
            self._row_min[key] = m
        return m

    def _vector_id(self, vec: tuple) -> int:
        v = self._vectors.setdefault(vec, len(self._vectors))
        self._vector_by_id[v] = vec
        return v

    def _min_vector(self, a: int, b: int) -> int:
        """The pointwise minimum of two strictness vectors, by id."""
        if a == b:
            return a
        key = (a, b) if a < b else (b, a)
        m = self._mins.get(key)
        if m is None:
            va, vb = self._vector_by_id[a], self._vector_by_id[b]
            m = self._mins[key] = self._vector_id(tuple(self._min_row(x, y)
                                                        for x, y in zip(va, vb)))
        return m

    def _row_ok(self, d: Class, s: Class) -> bool:
        key = (self._strictness(d), self._strictness(s))
        ok = self.rows.get(key)
        if ok is None:
            a, b = self._vector_by_id[key[0]], self._vector_by_id[key[1]]
            ok = self.rows[key] = all(self._ge(x, y) for x, y in zip(a, b))
        return ok

    def at_least_as_strict(self, d_id: int, s_id: int) -> bool:
        """A greatest fixed point: explore the pairs reachable by common names; any pair
        whose rows disagree refutes it. When none does, every pair explored holds too."""
        key = (d_id, s_id)
        if key in self.memo:
            return self.memo[key]
        classes = self.tree.classes
        seen = {key}
        stack = [key]
        fans = []
        ok = True
        while stack:
            d, s = stack.pop()
            if d == s:
                continue
            known = self.memo.get((d, s))
            if known is True:
                continue
            cd, cs = classes[d], classes[s]
            if known is False or not self._row_ok(cd, cs):
                ok = False
                break
            if not cs.globs and (not cs.literals or len(cd.literals) > 32):
                # Names s does not list take it to its default class: pair that with each
                # of d's children (for a d with many names, this may pair more than the
                # names do, which can only refuse more), then s's own names.
                fan = (d, cs.default)
                pairs = []
                if fan not in self.fanned:
                    if self._uniform(cs.default):
                        # Every node below s's default child is that one class, so each
                        # of d's children, and all below them, must be at least as strict
                        # as it: compare the pointwise minimum over them instead.
                        if not self._floor_ok(cd, cs.default):
                            ok = False
                            break
                    else:
                        fans.append(fan)
                        pairs = [(t, cs.default) for t in self.targets(cd)]
                # s's own names last, so they are explored first: where a stricter subtree
                # hides, it is usually behind one of them.
                pairs += [(cd.child(n, self.fold), t) for n, t in cs.literals]
            else:
                pairs = [(cd.child(n, self.fold), cs.child(n, self.fold)) for n in self._names(cd, cs)]
            for pair in pairs:
                if pair not in seen:
                    seen.add(pair)
                    stack.append(pair)
        if ok:
            for pair in seen:
                self.memo[pair] = True
            self.fanned.update(fans)
        else:
            self.memo[key] = False
            self.memo[(d, s)] = False  # the pair whose rows disagree
        return ok

    def _uniform(self, cid: int) -> bool:
        """Every descendant of class `cid` is in class `cid`."""
        c = self.tree.classes[cid]
        return not c.literals and not c.globs and c.default == cid

    def _floors(self) -> list[int]:
        """Per class, the pointwise minimum strictness over it and every class below it
        (as a vector id)."""
        if self._floor is None:
            classes = self.tree.classes
            floor = [self._strictness(c) for c in classes]
            changed = True
            while changed:  # a fixed point over the class graph (it has cycles)
                changed = False
                for c in classes:
                    low = floor[c.id]
                    for t in self.targets(c):
                        low = self._min_vector(low, floor[t])
                    if low != floor[c.id]:
                        floor[c.id] = low
                        changed = True
            self._floor = floor
        return self._floor

    def _floor_ok(self, d: Class, x: int) -> bool:
        """Every class below `d` is at least as strict as the uniform class `x`."""
        key = (d.id, x)
        ok = self.floor_memo.get(key)
        if ok is None:
            floors = self._floors()
            below = self._below.get(d.id)
            if below is None:
                below = floors[self.targets(d)[0]]
                for t in self.targets(d):
                    below = self._min_vector(below, floors[t])
                self._below[d.id] = below
            target = self._vector_by_id[self._strictness(self.tree.classes[x])]
            ok = self.floor_memo[key] = all(self._ge(a, b)
                                            for a, b in zip(self._vector_by_id[below], target))
        return ok

    def targets(self, c: Class) -> tuple[int, ...]:
        """Every class a child of `c` can be in."""
        t = self._targets.get(c.id)
        if t is None:
            t = self._targets[c.id] = tuple(sorted({x for _, x in c.literals} |
                                                   {x for _, x in c.masks} | {c.default}))
        return t

    def _names(self, a: Class, b: Class) -> list[bytes]:
        """Names that can lead the two classes apart: their literals, and one name per
        realisable combination of their globs."""
        if not a.literals and not b.literals and not a.globs and not b.globs:
            return [b"x"]  # both send every name to their default child
        lits = {lit for lit, _ in a.literals} | {lit for lit, _ in b.literals}
        globs = sorted({g.text for g in a.globs} | {g.text for g in b.globs})
        # The witnesses of the globs alone (memoised) serve unless one is a literal name.
        combos = realisable_masks(tuple(Glob(g) for g in globs))
        if any(w in lits for w in combos.values()):
            combos = glob_combinations(globs, frozenset(lits))
        return sorted(lits) + [w for _, w in sorted(combos.items())]
