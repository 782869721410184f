"""The class tree agrees with the reference evaluator.

The class tree (compiler/classes.py: subset construction over every rule's patterns,
then minimisation) is what the generated C walks; the evaluator (compiler/evaluate.py)
matches each rule's patterns directly. For every (atom, path) they must give the same
decision: kind, errno, userspace mode, audit (and the same deciding rules).

Paths come from each policy's own vocabulary: every literal component of its patterns,
one witness name for every combination of its name globs that a single name can match
(compiler.paths.glob_combinations), a few random names, and ASCII case variants. They
are explored breadth-first to depth MAX_DEPTH; a path whose (class, evaluator state)
pair was already seen adds nothing (both walks are deterministic in that pair), so the
exploration is exhaustive over the vocabulary, not a sample.

A hypothesis property does the same for random small policies and random paths, and
checks that minimisation keeps every decision and never adds classes.
"""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fpol.compiler import ops
from fpol.compiler.classes import ClassTree, build_raw, tables
from fpol.compiler.minimise import _Moves, _refine, _Shapes, build, minimise
from fpol.compiler.driver import check
from fpol.compiler.evaluate import Evaluator
from fpol.compiler.paths import ANY, Glob, TooManyGlobStates, glob_combinations
from oracles import requesters

ROOT = Path(__file__).resolve().parent.parent
MAX_DEPTH = 4


def _policy_files() -> list[Path]:
    files = sorted((ROOT / "examples").glob("*.fpol"))
    files += sorted((ROOT / "tests" / "cases").glob("*.fpol"))
    return files


def _checked_ok():
    out = []
    for p in _policy_files():
        result = check(p.read_bytes(), p.name, origin=str(p))
        if result.ok:
            out.append(pytest.param(p, id=f"{p.parent.name}/{p.stem}"))
    return out


POLICIES = _checked_ok()


def _vocabulary(policy, seed: int = 0) -> list[bytes]:
    literals, globs = set(), set()
    for r in policy.rules:
        for term in r.terms + r.excepts:
            for pattern in term.patterns:
                for part in pattern:
                    if isinstance(part, Glob):
                        globs.add(part.text)
                    elif part is not ANY:
                        literals.add(part)
    names = set(literals)
    try:
        names |= set(glob_combinations(sorted(globs), frozenset(literals)).values())
    except TooManyGlobStates:
        for g in globs:
            names |= set(glob_combinations([g], frozenset(literals)).values())
    # Near misses of every literal, and random names over the policy's own bytes.
    for lit in literals:
        names |= {lit + b"x", lit[:-1]} if len(lit) > 1 else {lit + b"x"}
    rng = random.Random(seed)
    pool = sorted({b for n in names for b in n} | set(b"xyz._-"))
    for _ in range(6):
        names.add(bytes(rng.choice(pool) for _ in range(rng.randint(1, 6))))
    names.add(b"\xc3\xa9")  # a two-byte UTF-8 name
    if policy.case_insensitive:
        names |= {n.upper() for n in names} | {n.swapcase() for n in names}
    names.discard(b"")
    names = {n for n in names if b"/" not in n and n not in (b".", b"..") and len(n) <= 255}
    return sorted(names)


def _fields(d):
    return (d.kind, d.errno, d.mode, d.audit, d.rules)


def compare_tree(policy, tree: ClassTree, names: list[bytes], max_depth: int = MAX_DEPTH) -> int:
    """Walk every path over `names` (deduplicated by state pair); return paths compared."""
    ev = Evaluator(policy)
    start = ((), tree.classes[0].id, ev.walk(()))
    seen = {(start[1], start[2])}
    queue = deque([start])
    compared = 0
    while queue:
        path, cid, positions = queue.popleft()
        cls = tree.classify(path)
        assert cls.id == cid
        for uid, gid in requesters(tree):
            subject = tree.subjects.classify(uid, gid)
            for atom in ops.ATOMS:
                want = ev.decision_at(path, atom, uid, gid)
                got = cls.decision(atom, subject)
                assert _fields(got) == _fields(want), (
                    f"{policy.file}: {atom} at /{b'/'.join(path).decode('utf-8', 'replace')} "
                    f"by uid {uid} gid {gid}: class {cls.id} subject {subject} says "
                    f"{got.short()} (rules {got.rules}), "
                    f"evaluator says {want.short()} (rules {want.rules})")
        compared += 1
        if len(path) >= max_depth:
            continue
        for name in names:
            child = tree.classes[cls.child(name, policy.case_insensitive)].id
            pos = ev.step(positions, name)
            if (child, pos) not in seen:
                seen.add((child, pos))
                queue.append((path + (name,), child, pos))
    return compared


@pytest.mark.parametrize("path", POLICIES)
def test_class_tree_agrees_with_evaluator(path):
    result = check(path.read_bytes(), path.name, origin=str(path))
    policy, tree = result.policy, result.classes
    names = _vocabulary(policy)
    compared = compare_tree(policy, tree, names)
    # Every class is reached by some path of the vocabulary.
    reached = {tree.classify(p).id for p in _paths_to_every_class(tree, names)}
    assert reached == {c.id for c in tree.classes}
    assert compared >= 1


def _paths_to_every_class(tree: ClassTree, names: list[bytes]) -> list[tuple]:
    fold = tree.policy.case_insensitive
    found = {tree.classes[0].id: ()}
    queue = deque([()])
    while queue:
        path = queue.popleft()
        c = tree.classify(path)
        for name in names:
            child = c.child(name, fold)
            if child not in found:
                found[child] = path + (name,)
                queue.append(found[child])
    return list(found.values())


def _example_params():
    return POLICIES


def test_glob_witnesses_avoid_literals_and_dot_names():
    # `?` fixes the length, so no padded variant of the avoided `x` serves: another byte does.
    assert glob_combinations([b"?"], frozenset({b"x", b"x.log"})) == {0: b"xx", 1: b"y"}
    every_stand_in = frozenset(bytes([b]) for b in b"xyzqjk0123456789_")
    assert glob_combinations([b"?"], every_stand_in)[1] not in every_stand_in
    # `.` and `..` are never a directory entry's name: not witnesses, and a combination only
    # they realise (`?` and `.*`: the name `.`) is not realisable.
    assert glob_combinations([b"?", b".*"]) == {1: b"x", 2: b".x", 0: b"x."}
    # Excluding a name hides no combination another name realises.
    for texts, avoid in (([b"?"], {b"x"}), ([b"?", b"*.c"], {b"x", b"x.c", b".c"}),
                         ([b"?x", b"*"], {b"xx", b"_x", b"yx"})):
        plain = glob_combinations(texts)
        got = glob_combinations(texts, frozenset(avoid))
        assert set(got) == set(plain) and not set(got.values()) & avoid
        globs = [Glob(t) for t in texts]
        for mask, name in got.items():
            assert mask == sum(1 << i for i, g in enumerate(globs) if g.matches(name))


def test_class_example_of_a_glob_combination():
    """A class reached by `*` & `*.exe` is named by a name matching both."""
    result = check('deny read matching "/home/*/.ssh/**"\ndeny exec named "*.exe"\n', "p.fpol")
    tree = result.classes
    for c in tree.classes:
        comps = tuple(x for x in c.example.split(b"/") if x)
        assert tree.classify(comps).id == c.id, (c.id, c.example)


@pytest.mark.parametrize("path", _example_params())
def test_class_examples_reach_their_class(path):
    """Each class's example path (shown in --emit classes and the C comments) leads to it,
    unless it uses the `other name` stand-in."""
    result = check(path.read_bytes(), path.name, origin=str(path))
    tree = result.classes
    for c in tree.classes:
        comps = tuple(x for x in c.example.split(b"/") if x)
        if any(x in (b"...", b"\x01other") or b"\x01" in x for x in comps):
            continue
        assert tree.classify(comps).table == c.table, (c.id, c.example)


def _raw_walk(raw, policy, path):
    fold = policy.case_insensitive
    sid = 0
    for name in path:
        st_ = raw[sid]
        key = name.lower() if fold else name
        if key in st_.literals:
            sid = st_.literals[key]
            continue
        mask = sum(1 << i for i, g in enumerate(st_.globs) if g.matches(key))
        sid = st_.masks.get(mask, st_.default)
    return sid


def check_minimisation(policy, paths) -> None:
    raw = build_raw(policy)
    table = tables(policy, raw)
    tree = minimise(policy, raw, table)
    assert len(tree.classes) <= tree.unminimised == len(raw)
    for path in paths:
        sid = _raw_walk(raw, policy, path)
        assert tree.classify(path).table == table[sid], path


@pytest.mark.parametrize("path", POLICIES)
def test_minimisation_preserves_decisions(path):
    result = check(path.read_bytes(), path.name, origin=str(path))
    policy = result.policy
    names = _vocabulary(policy)[:40]
    paths = [()] + [(a,) for a in names] + [(a, b) for a in names for b in names]
    rng = random.Random(1)
    paths += [tuple(rng.choice(names) for _ in range(rng.randint(3, MAX_DEPTH))) for _ in range(300)]
    check_minimisation(policy, paths)
    assert build(policy).classes == result.classes.classes


def test_some_policies_minimise():
    """Minimisation is not a no-op on the examples (guards the comparison above)."""
    merged = 0
    for p in sorted((ROOT / "examples").glob("*.fpol")):
        tree = check(p.read_bytes(), p.name, origin=str(p)).classes
        merged += tree.unminimised - len(tree.classes)
    assert merged > 0


def _moore_blocks(raw, table) -> list[int]:
    """Plain Moore refinement over minimise's own signatures: every state signed again
    every round, no groups, no worklist (what _refine must compute faster)."""
    shapes = _Shapes()
    moves = [_Moves(st_, shapes) for st_ in raw]
    ids: dict = {}
    block = [ids.setdefault(t, len(ids)) for t in table]
    while True:
        ids = {}
        new = [ids.setdefault((block[sid], mv.signature(block, shapes)), len(ids))
               for sid, mv in enumerate(moves)]
        if len(ids) == len(set(block)):
            return new
        block = new


def _first_of_block(block: list[int]) -> list[int]:
    """A partition as each state's first fellow: equal lists, equal partitions."""
    first: dict[int, int] = {}
    return [first.setdefault(b, sid) for sid, b in enumerate(block)]


def check_refinement(policy) -> None:
    raw = build_raw(policy)
    table = tables(policy, raw)
    block, _ = _refine(raw, table)
    assert _first_of_block(block) == _first_of_block(_moore_blocks(raw, table))


def test_refinement_with_cycles():
    """States merged on cycles longer than one (`**` then `a`, `b`, ...): the worklist
    refinement gives Moore's partition."""
    text = 'deny read matching "/{x,y}/**/a/{b,c}/**/d"\ndeny write named "*.log"\n'
    result = check(text, "p.fpol")
    raw = build_raw(result.policy)

    def succ(sid):
        st_ = raw[sid]
        return {*st_.literals.values(), *st_.masks.values(), st_.default}
    assert any(t != sid and sid in succ(t) for sid in range(len(raw)) for t in succ(sid))
    assert len(result.classes.classes) < len(raw)
    check_refinement(result.policy)


@pytest.mark.parametrize("path", POLICIES)
def test_refinement_is_moore(path):
    check_refinement(check(path.read_bytes(), path.name, origin=str(path)).policy)


def test_named_globs_followed_where_they_change_the_rules_holding():
    """build_raw follows a `named` glob's mask like the same mask without it, except where
    the glob's terms can change the rules holding: below its rule's other term (an `under`
    or a `matching` that ends at the name), where an except names it, or where it is a
    rule's only term. Each case against the evaluator."""
    text = """
deny create named "*.key" under /a
deny write named "*.key" matching "/b/*"
allow create under /a/x except named "*.key"
deny read named "*.log"
deny delete under /c except named "*.tmp", named "*.bak"
audit all named "*.pyc" under /d/e
"""
    result = check(text, "p.fpol")
    assert result.ok, result.diagnostics
    policy = result.policy
    names = sorted(set(_vocabulary(policy)) | {b"x.key", b"y.tmp", b"z.pyc", b"w.log"})
    assert compare_tree(policy, result.classes, names) > 0


def test_enough_policies():
    assert len(POLICIES) >= 30


# --- random policies ------------------------------------------------------------------

NAMES = ["a", "b", "c", "x.log", "ab"]
GLOBS = ["*.log", "a*", "?", "*", "?b", "*a*"]
PATH_NAMES = NAMES + ["x", "A", "B", "X.LOG", "aa.log", "zz", "a.log", "ba", "bb", ".log", "Ab"]

_comp = st.sampled_from(NAMES)
_plain_path = st.lists(_comp, min_size=0, max_size=3).map(lambda cs: "/" + "/".join(cs))
_glob_comp = st.sampled_from(NAMES + GLOBS + ["**", "{a,b}", "{*.log,c}"])
_glob_path = st.lists(_glob_comp, min_size=1, max_size=3).map(lambda cs: '"/' + "/".join(cs) + '"')
_name_glob = st.sampled_from(NAMES + GLOBS + ["{a,x.log}", "{*.log,a*}"]).map(lambda g: f'"{g}"')

_scope = st.one_of(
    _plain_path.map(lambda p: f"under {p}"),
    _plain_path.map(lambda p: f"at {p}"),
    _glob_path.map(lambda g: f"matching {g}"),
    _name_glob.map(lambda g: f"named {g}"),
)
_ops = st.lists(st.sampled_from(["read", "write", "create", "delete", "list", "stat", "exec",
                                 "all", "lookup", "open", "access", "rename", "link", "flush",
                                 "getattr", "mkdir"]),
                min_size=1, max_size=3, unique=True)


@st.composite
def _rule(draw):
    action = draw(st.sampled_from(["allow", "deny", "deny", "audit", "redirect"]))
    op_list = draw(_ops)
    text = f"{action} {', '.join(op_list)}"
    if action == "redirect":
        text += " to userspace"
        if set(op_list) <= {"open", "lookup", "list", "getattr"}:
            text += draw(st.sampled_from(["", " before", " after"]))
    for s in draw(st.lists(_scope, max_size=2)):
        text += " " + s
    excepts = draw(st.lists(_scope, max_size=2))
    if excepts:
        text += " except " + ", ".join(excepts)
    if action == "deny":
        text += draw(st.sampled_from(["", "", " with EPERM", " with EROFS"]))
    return text


@st.composite
def policies(draw):
    lines = []
    if draw(st.booleans()):
        lines.append("names case-insensitive")
    lines.append(draw(st.sampled_from(["", "mode complain"])))
    lines.append(draw(st.sampled_from(["", "default deny", "default deny with EPERM",
                                       "default redirect to userspace"])))
    lines += draw(st.lists(_rule(), min_size=1, max_size=5))
    return "\n".join(lines) + "\n"


_paths = st.lists(st.lists(st.sampled_from(PATH_NAMES), max_size=4)
                  .map(lambda cs: tuple(c.encode() for c in cs)), min_size=1, max_size=25)

RANDOM = settings(max_examples=150, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@RANDOM
@given(text=policies(), paths=_paths)
def test_random_policies_class_tree_agrees(text, paths):
    result = check(text, "p.fpol")
    assume(result.ok)  # errno / mode ties and impossible redirects are compile errors
    policy, tree = result.policy, result.classes
    ev = Evaluator(policy)
    for path in paths + [()]:
        cls = tree.classify(path)
        for uid, gid in requesters(tree):
            subject = tree.subjects.classify(uid, gid)
            for atom in ops.ATOMS:
                want, got = ev.decision_at(path, atom, uid, gid), cls.decision(atom, subject)
                assert _fields(got) == _fields(want), (text, path, uid, gid, atom, got, want)
    check_minimisation(policy, paths)
    check_refinement(policy)


@RANDOM
@given(text=policies())
def test_random_policies_exhaustive_small_vocabulary(text):
    result = check(text, "p.fpol")
    assume(result.ok)
    names = sorted({n.encode() for n in PATH_NAMES} | set(_vocabulary(result.policy)))
    compare_tree(result.policy, result.classes, names, max_depth=3)


def _check_rows_hash_as_tuples(policy):
    """classes.tables finds rows by their decisions' hashes and makes a new row's hash from
    them (DecisionRow.spread): each row must hash as the plain tuple it equals, or memos
    keyed by rows would miss (or, worse, a row would be taken for another)."""
    raw = build_raw(policy)
    seen: dict = {}
    for table in tables(policy, raw):
        for row in table.rows:
            plain = tuple(row)
            assert row == plain and hash(row) == hash(plain) == tuple.__hash__(row)
            # equal rows are one object (tables interns them)
            assert seen.setdefault(plain, row) is row


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob(
    "examples/*.fpol")), ids=lambda p: p.name)
def test_example_rows_hash_as_tuples(path):
    result = check(path.read_bytes(), str(path))
    assert result.ok
    _check_rows_hash_as_tuples(result.policy)


@RANDOM
@given(text=policies())
def test_random_rows_hash_as_tuples(text):
    result = check(text, "p.fpol")
    assume(result.ok)
    _check_rows_hash_as_tuples(result.policy)
