"""The product of two class trees (compiler/product.py) and what walks it.

- `product.names` tells a pair's children apart exactly: whatever name a path takes, the
  pair of classes it leads to is one the names lead to (each side folding case as its
  policy says, also when the two sides differ).
- `moves.Strictness`, which walks the product of a tree with itself and settles most pairs
  by their decisions alone (the least strict below one class against the strictest below
  the other), answers exactly as the plain greatest fixed point it stands for: every pair
  reachable by common names (or, where the source side lists no globs, by the fan its
  docstring describes) has rows at least as strict.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fpol.compiler.classes import Class, ClassTree, realisable_masks
from fpol.compiler.driver import check
from fpol.compiler.moves import Strictness
from fpol.compiler.paths import Glob, glob_combinations
from fpol.compiler.policy import STRICTNESS
from fpol.compiler.product import Product, Reach, names, product_walk

from strategies import REQUEST_NAMES, policies

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _tree(text: str, name: str = "p.fpol"):
    result = check(text, name)
    return result.classes if result.ok else None


# --- a reference for Strictness: the fixed point as it was first written ---------------------

def _reference_names(a: Class, b: Class) -> list[bytes]:
    """moves.Strictness's own names before the product walk was shared."""
    if not a.literals and not b.literals and not a.globs and not b.globs:
        return [b"x"]
    lits = {lit for lit, _ in a.literals} | {lit for lit, _ in b.literals}
    globs = sorted({g.text for g in a.globs} | {g.text for g in b.globs})
    combos = realisable_masks(tuple(Glob(g) for g in globs))
    if any(w in lits for w in combos.values()):
        combos = glob_combinations(globs, frozenset(lits))
    return sorted(lits) + [w for _, w in sorted(combos.items())]


def _reference_strict(tree: ClassTree, d: int, s: int) -> bool:
    classes, fold = tree.classes, tree.policy.case_insensitive

    def rows_ok(x: Class, y: Class) -> bool:
        return all(STRICTNESS[a.kind] >= STRICTNESS[b.kind]
                   for rx, ry in zip(x.table.rows, y.table.rows) for a, b in zip(rx, ry))

    def targets(c: Class) -> list[int]:
        return sorted({t for _, t in c.literals} | {t for _, t in c.masks} | {c.default})

    seen = {(d, s)}
    stack = [(d, s)]
    while stack:
        x, y = stack.pop()
        if x == y:
            continue
        cx, cy = classes[x], classes[y]
        if not rows_ok(cx, cy):
            return False
        if not cy.globs and (not cy.literals or len(cx.literals) > 32):
            pairs = [(t, cy.default) for t in targets(cx)]
            pairs += [(cx.child(n, fold), t) for n, t in cy.literals]
        else:
            pairs = [(cx.child(n, fold), cy.child(n, fold)) for n in _reference_names(cx, cy)]
        for pair in pairs:
            if pair not in seen:
                seen.add(pair)
                stack.append(pair)
    return True


@SETTINGS
@given(policies(max_rules=8), st.randoms(use_true_random=False))
def test_strictness_is_the_fixed_point(text, rnd):
    tree = _tree(text)
    if tree is None:
        return
    strict = Strictness(tree)
    n = len(tree.classes)
    # The queries lower.py asks (a class against each class its children can be in),
    # then any pairs, in an order that mixes memoised answers with new ones.
    queries = [(c.id, t) for c in tree.classes for t in strict.targets(c)]
    queries += [(rnd.randrange(n), rnd.randrange(n)) for _ in range(3 * n)]
    for d, s in queries:
        assert strict.at_least_as_strict(d, s) == _reference_strict(tree, d, s), (d, s)


# --- the names of a pair --------------------------------------------------------------

_NAMES = st.one_of(st.sampled_from(REQUEST_NAMES),
                   st.binary(min_size=1, max_size=8)).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))


@SETTINGS
@given(policies(max_rules=5), policies(max_rules=5), st.lists(_NAMES, min_size=1, max_size=12))
# `?` matches the literal `x`: its way is to be found from another name (once it was not).
@example("policy 0", 'policy 0\nallow read matching "/**/?/x{,.log}" by uid 0 except by uid 1\n',
         [b"a"])
# One side folds case: /Abc (`a*` on both) and /aB (`ab`, `AB`, `Ab` against `ab`) once
# took ways no name tried did.
@example('names case-insensitive\ndeny read matching "/a*"\n', 'deny read matching "/a*"\n',
         [b"Abc"])
@example("names case-insensitive\ndeny read at /ab\n",
         "deny read at /ab\ndeny read at /AB\ndeny read at /Ab\n", [b"aB"])
def test_the_names_reach_every_child_pair(text_a, text_b, extra):
    a, b = _tree(text_a, "a.fpol"), _tree(text_b, "b.fpol")
    if a is None or b is None:
        return
    fa, fb = a.policy.case_insensitive, b.policy.case_insensitive
    product = Product(a, b)
    for _, ca, cb in product_walk(a, b):
        pairs = set(product.successors(ca.id, cb.id))
        assert product.names(ca.id, cb.id) == names(ca, cb, fa, fb)
        for name in extra + [lit for lit, _ in ca.literals + cb.literals]:
            for spelling in (name, name.upper(), name.lower(), name.swapcase(),
                             name[:1].upper() + name[1:], name[:1] + name[1:].upper()):
                assert (ca.child(spelling, fa), cb.child(spelling, fb)) in pairs, spelling


def test_names_literals_first_then_one_witness_per_combination():
    tree = _tree('deny write matching "/d/*.log"\ndeny read at /d/a.log\n'
                 'deny read matching "/d/k*"\n')
    d = tree.classify((b"d",))
    got = names(d, d, False, False)
    assert got[0] == b"a.log"
    witnesses = got[1:]
    assert b"a.log" not in witnesses
    masks = {tuple(g.matches(w) for g in (Glob(b"*.log"), Glob(b"k*"))) for w in witnesses}
    assert masks == {(False, False), (True, False), (False, True), (True, True)}


def test_names_when_one_side_folds_case():
    a = _tree("names case-insensitive\ndeny read under /Data\n", "a.fpol")
    b = _tree("deny read under /data\n", "b.fpol")
    got = names(a.classes[0], b.classes[0], True, False)
    # The case-sensitive side tells DATA and data apart; the other does not.
    assert {b"data", b"DATA"} <= set(got)


def test_product_walk_pairs_once_with_a_shortest_path():
    a = _tree("deny read under /a/b\n", "a.fpol")
    b = _tree("deny read under /a\n", "b.fpol")
    walked = list(product_walk(a, b))
    pairs = [(ca.id, cb.id) for _, ca, cb in walked]
    assert len(pairs) == len(set(pairs))
    assert walked[0][0] == ()
    paths = [p for p, _, _ in walked]
    assert paths == sorted(paths, key=len)  # breadth first
    for path, ca, cb in walked:
        assert a.classify(path) is ca and b.classify(path) is cb


def test_reach_meets_each_pair_once_and_follows_only_what_it_is_told():
    edges = {(0, 0): [(1, 1), (2, 2)], (1, 1): [(2, 2), (3, 3)], (2, 2): [(0, 0)],
             (3, 3): [(4, 4)]}
    reach = Reach((0, 0))
    order = []
    for pair in reach:
        order.append(pair)
        for nxt in edges.get(pair, []):
            reach.add(nxt)
    assert order == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]  # breadth first
    reach = Reach((0, 0))
    order, added = [], []
    for pair in reach:
        order.append(pair)
        if pair != (1, 1):  # settled: not followed
            added += [(nxt, reach.add(nxt)) for nxt in edges.get(pair, [])]
    assert order == [(0, 0), (1, 1), (2, 2)]
    assert added == [((1, 1), True), ((2, 2), True), ((0, 0), False)]
    assert reach.seen == {(0, 0), (1, 1), (2, 2)}
