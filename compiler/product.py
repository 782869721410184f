"""The product of two class trees: pairs of classes, one of each tree (or two of one tree),
that the same names reach.

Two classes send a name to a child each: by its literal, else by the set of their name
globs it matches (classes.Class.child). So a pair's children are told apart by finitely
many names (`names`): every literal of either side, one witness per realisable combination
of the two sides' glob masks (paths.glob_combinations: only masks some real name produces),
which covers "any other name" too. Each side folds case or not as its policy says; when the
two differ, the names are found by a search over both sides' literals and globs, folding
on one side only (`_mixed_names`): any spelling may be the one that tells them apart.

Walks over the product:
- `product_walk`: every pair reachable from the two roots, breadth first with one shortest
  path each (`fpol diff`, and so `fpol learn`).
- `Reach`: the pairs reachable from a start pair, breadth first, following only what the
  caller follows (`moves.gain`, over pairs of the evaluator's position sets).
- `moves.Strictness` walks `Product.successors` depth first itself: it prunes pairs it
  has settled otherwise, and stops at the first refutation.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Hashable, Iterator, Optional, TypeVar

from .classes import Class, ClassTree, realisable_masks
from .paths import (MAX_GLOB_STATES, NAME_MAX, NOT_NAMES, STAND_INS, Glob,
                    TooManyGlobStates, glob_close, glob_combinations, glob_step)

Pair = tuple[int, int]
T = TypeVar("T", bound=Hashable)
Path = tuple[bytes, ...]


def names(a: Class, b: Class, fold_a: bool, fold_b: bool) -> list[bytes]:
    """One name for each way the two classes can tell a child apart: their literals in
    byte order, then one witness per realisable glob combination, by mask (a witness is
    never a literal, in either case)."""
    if fold_a != fold_b:
        return _mixed_names(a, b, fold_a, fold_b)
    literals = {name for name, _ in a.literals} | {name for name, _ in b.literals}
    globs = tuple(sorted({g.text for g in a.globs} | {g.text for g in b.globs}))
    avoid = frozenset(literals | {n.lower() for n in literals})
    return sorted(literals) + [w for _, w in sorted(_combinations(globs, avoid).items())]


def _mixed_names(a: Class, b: Class, fold_a: bool, fold_b: bool) -> list[bytes]:
    """`names` when one side folds case and the other does not. The folding side's
    literals and globs are lower case and it looks at a name lowered; the other looks at
    the name as it is. So a spelling of one side's literal or glob that the other side
    tells apart may be the only way to a pair (`/aB` where the folding side lists `ab`
    and the other `ab`, `AB`, `Ab`; `/Abc` where both match `a*`): no fixed set of
    spellings serves. Every name's way on both sides (the literal it is, or else the
    glob mask it has) is found by one breadth-first search over the joint state of both
    sides' literal tries and glob NFAs, over every byte the two sides name in either case
    and one stand-in for all other bytes, one name per way (never `.` or `..`). The
    literals themselves come first, so a place is shown by the name a policy wrote."""
    sides = ((a, fold_a), (b, fold_b))
    lits = [frozenset(n for n, _ in c.literals) for c, _ in sides]
    prefixes = [frozenset(n[:i] for n in ls for i in range(len(n) + 1)) for ls in lits]
    globs = [tuple(g.text for g in c.globs) for c, _ in sides]
    folds = (fold_a, fold_b)
    named = {byte for ls, gs in zip(lits, globs) for text in (*ls, *gs) for byte in text}
    alphabet = sorted({x for byte in named for x in (byte, _lower(byte), _upper(byte))}
                      - {ord("*"), ord("?")} | {byte for ls in lits for n in ls for byte in n})
    other = next(x for x in list(STAND_INS) + list(range(1, 256))
                 if x not in alphabet and _lower(x) not in alphabet
                 and _upper(x) not in alphabet and x != ord("/"))
    alphabet.append(other)

    def way(i: int, key: Optional[bytes], states: tuple) -> tuple:
        if key is not None and key in lits[i]:
            return ("name", key)
        return ("globs", sum(1 << k for k, (t, st) in enumerate(zip(globs[i], states))
                             if len(t) in st))

    def ways(name: bytes) -> tuple:
        out = []
        for i in (0, 1):
            key = name.lower() if folds[i] else name
            out.append(way(i, key, tuple(frozenset({len(t)}) if Glob(t).matches(key) else
                                         frozenset() for t in globs[i])))
        return tuple(out)

    found: dict[tuple, bytes] = {}
    for name in sorted(lits[0] | lits[1]):
        found.setdefault(ways(name), name)
    # Which bytes take a literal prefix on to a longer one (lower case on the folding side).
    grows: list[dict[bytes, set[int]]] = [{}, {}]
    for i in (0, 1):
        for p in prefixes[i]:
            if p:
                grows[i].setdefault(p[:-1], set()).add(p[-1])

    def step(joint: tuple, byte: int) -> tuple:
        nxt = []
        for i, (key, states) in enumerate(joint):
            x = _lower(byte) if folds[i] else byte
            k = key + bytes([x]) if key is not None else None
            nxt.append((k if k in prefixes[i] else None,
                        tuple(glob_step(t, st, x) for t, st in zip(globs[i], states))))
        return tuple(nxt)

    start: tuple = tuple((b"", tuple(glob_close(t, frozenset({0})) for t in globs[i]))
                         for i in (0, 1))
    queue: list[tuple[tuple, bytes]] = [(start, b"")]
    seen: set = set()
    # Glob states of a state in neither trie whose children by every byte have been met:
    # from any state with these glob states, a byte that takes no literal prefix on leads
    # to one of those children (a state in neither trie), so only the bytes that do are
    # tried (a class of many literals is searched in time linear in them).
    expanded: set = set()
    head = glob_states = 0
    while head < len(queue):
        joint, word = queue[head]
        head += 1
        globs_at = (joint[0][1], joint[1][1])
        if globs_at not in expanded or word in (b"", b"."):
            if joint[0][0] is None and joint[1][0] is None and word not in (b"", b"."):
                expanded.add(globs_at)
            bytes_now: list[int] = alphabet
        else:
            special: set[int] = set()
            for i, (key, _) in enumerate(joint):
                for x in grows[i].get(key, ()) if key is not None else ():
                    special |= {x, _upper(x)} if folds[i] else {x}
            bytes_now = [x for x in alphabet if x in special]
        for byte in bytes_now:
            name = word + bytes([byte])
            state = step(joint, byte)
            seen_key = (state, name if name in NOT_NAMES else None)
            if seen_key in seen:
                continue
            seen.add(seen_key)
            # The literal tries bound the states that are still in one (by the literals'
            # length); the glob states alone are what may explode.
            if state[0][0] is None and state[1][0] is None:
                glob_states += 1
            if glob_states > MAX_GLOB_STATES:
                raise TooManyGlobStates(
                    "too many names to compare a case-insensitive policy with a "
                    "case-sensitive one at one level")
            if name not in NOT_NAMES and len(name) <= NAME_MAX:
                found.setdefault(tuple(way(i, k, st) for i, (k, st) in enumerate(state)), name)
            queue.append((state, name))
    return sorted(set(found.values()))


def _lower(byte: int) -> int:
    return byte + 32 if 65 <= byte <= 90 else byte


def _upper(byte: int) -> int:
    return byte - 32 if 97 <= byte <= 122 else byte


def _combinations(globs: tuple[bytes, ...], avoid: frozenset) -> dict[int, bytes]:
    """glob_combinations(globs, avoid): the memoised witnesses of the globs alone serve
    unless one of them is to be avoided."""
    if not globs:
        return glob_combinations([], avoid)
    combos = realisable_masks(tuple(Glob(g) for g in globs))
    if any(w in avoid for w in combos.values()):
        combos = glob_combinations(list(globs), avoid)
    return combos


class Product:
    """Two class trees (or one tree twice) walked together by name. The names of a pair
    depend only on the two classes' literal names and glob texts (their shapes), which
    recur across a tree, so they are worked out once per pair of shapes."""

    def __init__(self, a: ClassTree, b: ClassTree):
        self.a, self.b = a.classes, b.classes
        self.fold_a, self.fold_b = a.policy.case_insensitive, b.policy.case_insensitive
        self._shapes: dict[tuple, int] = {}
        self._shape_a: dict[int, int] = {}
        self._shape_b: dict[int, int] = self._shape_a if a is b else {}
        self._names: dict[Pair, list[bytes]] = {}

    def _shape(self, c: Class, memo: dict[int, int]) -> int:
        s = memo.get(c.id)
        if s is None:
            key = (tuple(n for n, _ in c.literals), tuple(g.text for g in c.globs))
            s = memo[c.id] = self._shapes.setdefault(key, len(self._shapes))
        return s

    def names(self, ia: int, ib: int) -> list[bytes]:
        """`names` of class `ia` of the first tree and class `ib` of the second."""
        ca, cb = self.a[ia], self.b[ib]
        key = (self._shape(ca, self._shape_a), self._shape(cb, self._shape_b))
        out = self._names.get(key)
        if out is None:
            out = self._names[key] = names(ca, cb, self.fold_a, self.fold_b)
        return out

    def children(self, ia: int, ib: int) -> list[tuple[bytes, Pair]]:
        """Each name of the pair with the pair of classes it leads to."""
        ca, cb, fa, fb = self.a[ia], self.b[ib], self.fold_a, self.fold_b
        return [(n, (ca.child(n, fa), cb.child(n, fb))) for n in self.names(ia, ib)]

    def successors(self, ia: int, ib: int) -> Iterator[Pair]:
        """The pairs the pair's children are in (repeats possible), made as they are taken:
        a walk may stop at the first few. The glob witnesses' come first (the names in
        reverse order). Where neither side has globs (and both fold alike), the names are
        the literals of both and one other name, which takes each side to its default, so
        they need not be listed."""
        ca, cb, fa, fb = self.a[ia], self.b[ib], self.fold_a, self.fold_b
        if not ca.globs and not cb.globs and fa == fb:
            return _literal_successors(ca, cb, fa)
        return ((ca.child(n, fa), cb.child(n, fb)) for n in reversed(self.names(ia, ib)))


def _literal_successors(a: Class, b: Class, fold: bool) -> Iterator[Pair]:
    """Product.successors of two classes without globs: the other name first."""
    yield a.default, b.default
    for n, _ in b.literals:
        yield a.child(n, fold), b.child(n, fold)
    for n, _ in a.literals:
        yield a.child(n, fold), b.child(n, fold)


class Reach(Generic[T]):
    """The pairs reachable from `start`, each met once, breadth first (pairs of classes
    here; moves.gain walks pairs of NFA position sets with it). Iterating gives the next
    pair to look at; the caller then adds the pairs it leads to (`add`), or does not, or
    stops. `seen` holds every pair met, looked at or still waiting."""

    def __init__(self, start: T):
        self.seen = {start}
        self._todo: deque[T] = deque([start])

    def __iter__(self) -> Iterator[T]:
        todo = self._todo
        while todo:
            yield todo.popleft()

    def add(self, pair: T) -> bool:
        """Meet `pair`: False when it was met before."""
        if pair in self.seen:
            return False
        self.seen.add(pair)
        self._todo.append(pair)
        return True


def product_walk(a: ClassTree, b: ClassTree,
                 product: Optional[Product] = None) -> Iterator[tuple[Path, Class, Class]]:
    """Every pair of classes that one path reaches in `a` and in `b`, once each, with a
    shortest such path (breadth first; names in byte order, so the walk is deterministic
    and the same with the trees swapped)."""
    product = product or Product(a, b)
    reach = Reach((0, 0))
    paths: dict[Pair, Path] = {(0, 0): ()}
    for ia, ib in reach:
        path = paths.pop((ia, ib))
        yield path, a.classes[ia], b.classes[ib]
        for name, pair in product.children(ia, ib):
            if reach.add(pair):
                paths[pair] = path + (name,)
