"""Sharing fuse_ops instances and programs between classes (compiler/lower.py
_shared_instances, _Planner's name signatures) changes no decision.

The same request sequences run through the fuse-bpf dispatch model (tests/fusebpf_model.py)
twice: with the instances and programs as compiled, and with one instance per class and
namespace programs per class (lower.SHARING off). Every outcome must be the same: kind,
errno, mode, whether the realisation refused, the stage it failed at, and whether the daemon
got a request it cannot resolve. Policies: the examples and small realistic ones
(benchmarks/policies.py), where classes share a lot.
"""

from __future__ import annotations

import glob
import os
import random
import sys

import pytest

from fpol.compiler.driver import check, check_file

from fusebpf_model import Backing, FuseBpfModel
from kernel_support import require_bpf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
from policies import realistic_text  # noqa: E402

EXAMPLES = sorted(glob.glob(os.path.join(HERE, "..", "examples", "*.fpol")))
REALISTIC = [(40, 1), (120, 2), (300, 3)]
OPS = ["lookup", "getattr", "open", "read", "write", "readdir", "opendir", "access", "setattr",
       "create", "mkdir", "mknod", "symlink", "unlink", "rmdir", "rename", "fsync", "fsyncdir",
       "getxattr", "setxattr", "copy_file_range", "statfs"]
FLAGS = [0, 1, 2, 0o1001, 0o2001, 0o101]


def _checked(which):
    if isinstance(which, str):
        return check_file(which).require()
    n, seed = which
    return check(realistic_text(n, seed).encode(), f"r{n}.fpol").require()


def _paths(checked, rng: random.Random) -> list[tuple]:
    """Paths into the policy's scopes (literal components of its rules), a bit below them,
    and at names its globs pick."""
    words: set[bytes] = set()
    for r in checked.policy.rules:
        for term in list(r.terms) + list(r.excepts):
            for pattern in term.patterns:
                for part in pattern:
                    if isinstance(part, bytes):
                        words.add(part)
    words = sorted(words) or [b"a"]
    out = []
    for _ in range(12):
        depth = rng.randint(1, 5)
        path = tuple(rng.choice(words) if rng.random() < 0.8 else
                     rng.choice([b"x", b"f.key", b"n.tmp", b"g.log"]) for _ in range(depth))
        out.append(path)
    return out


def _ids(which):
    return os.path.basename(which) if isinstance(which, str) else f"realistic{which[0]}"


@pytest.fixture(scope="module", params=EXAMPLES + REALISTIC, ids=_ids)
def both(request):
    require_bpf()
    from fpol.compiler import lower as lowermod
    from fpol.runtime.engine import CheckEngine
    from fpol.runtime.objects import build

    checked = _checked(request.param)
    shared = lowermod.lower(checked.classes)
    lowermod.SHARING = False
    try:
        unshared = lowermod.lower(checked.classes)
    finally:
        lowermod.SHARING = True
    # The check object's tables do not depend on sharing: one engine serves both models.
    engine = CheckEngine(build(checked, "check", model=unshared))
    yield checked, shared, unshared, engine
    engine.close()


def _run(checked, model, engine, present, dirs, requests):
    backing = Backing()
    for p in present:
        backing.add(p, p in dirs)
    tree = checked.classes
    fb = FuseBpfModel(model, engine, backing, lambda path: tree.classify(path).id)
    out = []
    for op, path, to, flags in requests:
        got = fb.request(op, path, to, flags, 7 if op == "access" else 0)
        out.append((op, path, to, got.kind, got.errno, got.mode, got.realised, got.stage,
                    bool(got.unresolved)))
    return out


def test_sharing_changes_no_decision(both):
    checked, shared, unshared, engine = both
    names = {i.name for i in shared.instances}
    assert len(shared.instances) == len(unshared.instances) == len(checked.classes.classes)
    assert len(names) <= len(unshared.instances)
    rng = random.Random(13)
    paths = _paths(checked, rng)
    tree = checked.classes
    instance_of = {i.cls: i.name for i in shared.instances}
    for path in paths:
        dirs = {path[:i] for i in range(1, len(path))}
        # A walk from a fresh cache attaches each inode its own class's (shared) instance.
        backing = Backing()
        backing.add(path, False)
        fb = FuseBpfModel(shared, engine, backing, lambda p: tree.classify(p).id)
        node, failure = fb.walk(path)
        if failure is None:
            assert node.ops == instance_of[tree.classify(path).id], path
        # Every op on the path, and renames to a sibling, decide alike.
        requests = [[(op, path, None, flags)] for op in OPS if op != "rename"
                    for flags in (FLAGS if op in ("open", "create") else [0])]
        sibling = path[:-1] + (rng.choice([b"x", path[-1] + b"2", b"a.key"]),)
        requests.append([("rename", path, sibling, 0)])
        requests.append([("rename", sibling, path, 0)])
        other = rng.choice(paths)
        requests.append([("rename", path, other, 0)])
        # A short sequence: objects made, then used and moved.
        seq = []
        for _ in range(6):
            op = rng.choice(OPS)
            seq.append((op, rng.choice([path, sibling]), rng.choice([path, sibling, other])
                        if op == "rename" else None, rng.choice(FLAGS)))
        requests.append(seq)
        for reqs in requests:
            present = [path] + ([sibling] if reqs[0][0] == "rename" and reqs[0][1] == sibling
                                else [])
            a = _run(checked, shared, engine, present, dirs | {path[:-1]}, reqs)
            b = _run(checked, unshared, engine, present, dirs | {path[:-1]}, reqs)
            assert a == b, "sharing changed a decision:\n" + "\n".join(
                f"  {x}\n  {y}" for x, y in zip(a, b) if x != y)


def test_realistic_policies_share():
    """Small realistic policies do share instances and programs."""
    from fpol.compiler import lower as lowermod

    checked = _checked((300, 3))
    shared = lowermod.lower(checked.classes)
    lowermod.SHARING = False
    try:
        unshared = lowermod.lower(checked.classes)
    finally:
        lowermod.SHARING = True
    assert len({i.name for i in shared.instances}) < 0.9 * len(unshared.instances)
    assert len(shared.programs) < 0.7 * len(unshared.programs)
    # Classes of one instance point at the same members; the root keeps its own name.
    assert shared.instances[0].name == unshared.instances[0].name
    by_name: dict = {}
    for i in shared.instances:
        assert by_name.setdefault(i.name, i.members) == i.members


def test_the_struct_ops_plan_is_made_only_when_asked_for():
    """Lowering and the check object leave the struct_ops object's programs unplanned (at
    10,000 rules planning them is most of lowering); the check object's C names each
    class's shared instance all the same, and is the same after planning."""
    from fpol.compiler.lower import lower
    from fpol.compiler.render import render

    tree = check(realistic_text(150), "r150.fpol").require().classes
    model = lower(tree)
    before = render(model, "check")
    assert model.planned is None
    names = {i.cls: i.name for i in model.instances}  # plans now
    assert model.planned is not None
    assert [c.instance for c in model.classes] == [names[c.id] for c in model.classes]
    assert len(set(names.values())) < len(names)  # some classes share an instance
    assert render(model, "check") == before
    assert "fpol_lookup_" in render(model)
