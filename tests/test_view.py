"""compiler/view.py, the daemon's view of a compiled policy: what it answers must be what
the evaluator answers, what it lets the kernel cache must be a plain allow, and the places
it hands the daemon must be refused by any other view."""

from __future__ import annotations

import errno
import io
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fpol.compiler.driver import check
from fpol.compiler.evaluate import Evaluator, Request
from fpol.compiler.view import ForeignPlace, PolicyView, plain_allow
from fpol.runtime.fuse import protocol as P
from fpol.runtime.fuse.device import Channel
from fpol.runtime.fuse.enforce import AuditLog, Enforcer
from fpol.runtime.fuse.inodes import InodeTable
from fpol.runtime.fuse.server import FuseServer

from oracles import requesters
from strategies import policies, request_paths

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _view(text: str):
    checked = check(text.encode("utf-8"), "p.fpol")
    if not checked.ok:
        return None, None
    return PolicyView(checked.classes, checked.digest), Evaluator(checked.policy)


@SETTINGS
@given(text=policies(), pairs=st.lists(st.tuples(request_paths(1, 4), request_paths(1, 4)),
                                       min_size=1, max_size=8),
       op=st.sampled_from(["rename", "link"]))
def test_move_verdicts_remembered_per_class_pair_equal_the_evaluator(text, pairs, op):
    # The daemon asks `move` with the classes of both ends; the verdict it remembers for a
    # pair of classes must be the evaluator's for every path pair with those classes.
    view, evaluator = _view(text)
    if view is None:
        return
    for src, dst in pairs + [(d, s) for s, d in pairs]:
        got = view.move(op, src, dst, view.classify(src), view.classify(dst))
        want = evaluator.evaluate(Request(op, src, dst))
        assert got.request == Request(op, src, dst)
        assert (got.decision.kind, got.decision.errno, got.exdev) == \
            (want.decision.kind, want.decision.errno, want.exdev), (src, dst)


@SETTINGS
@given(text=policies(), path=request_paths(1, 5))
def test_what_the_kernel_may_cache_is_a_plain_allow(text, path):
    view, evaluator = _view(text)
    if view is None:
        return
    rule = view.cache(view.classify(path))
    # The kernel's caches answer every user alike: a plain allow for every requester the
    # policy tells apart (subject conditions), not only for uid 0.
    who = requesters(view.tree)
    for op, cached in (("lookup", rule.entries), ("getattr", rule.attributes)):
        assert cached == all(plain_allow(evaluator.evaluate(
            Request(op, path, uid=uid, gid=gid)).decision) for uid, gid in who), op


# --- places: the daemon's handles, refused by any view but their own -----------------------

PLACES_POLICY = "policy p\ndeny write under /ro with EROFS\naudit read under /logs\n"


def test_places_are_one_per_class_made_once_and_immutable():
    view, _ = _view(PLACES_POLICY)
    assert len(view.places) == len(view) == len(view.tree.classes)
    assert view.root is view.places[0]
    ro = view.classify((b"ro", b"f"))
    # Asking hands out the view's own places: nothing is made per call.
    assert ro is view.classify((b"ro", b"f")) is view.child(view.child(view.root, b"ro"), b"f")
    assert any(ro is p for p in view.places)
    assert view.number(ro) == view.tree.classify((b"ro", b"f")).id
    with pytest.raises(AttributeError):
        ro.cls = view.root.cls  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ro.other = 1  # type: ignore[attr-defined]


def test_a_place_of_another_view_is_refused_never_decided():
    # After a reload, a place kept from the old view must not name a class of the new one,
    # even for the same policy (the same class numbers): every question refuses it loudly.
    old, _ = _view(PLACES_POLICY)
    new, _ = _view(PLACES_POLICY)
    stale = old.classify((b"ro", b"f"))
    mine = new.classify((b"ro", b"f"))
    path = (b"ro", b"f")
    for ask in (lambda p: new.child(p, b"x"), lambda p: new.decision(p, "write", 0),
                lambda p: new.plain_allow(p, "read"), lambda p: new.cache(p),
                lambda p: new.passthrough(p), lambda p: new.number(p),
                lambda p: new.move("rename", path, path, p, mine),
                lambda p: new.move("link", path, path, mine, p)):
        with pytest.raises(ForeignPlace, match="did not make it"):
            ask(stale)
    assert new.decision(mine, "write", 0).errno == "EROFS"


def test_a_reload_leaves_no_node_a_place_of_the_old_view(tmp_path):
    old, _ = _view(PLACES_POLICY)
    new, _ = _view("policy q\ndeny read under /ro\n")
    (tmp_path / "ro" / "d").mkdir(parents=True)
    (tmp_path / "ro" / "d" / "f").write_text("x")
    (tmp_path / "gone").write_text("y")
    table = InodeTable(os.open(tmp_path, os.O_PATH | os.O_DIRECTORY), old.root)
    try:
        ro, _ = table.lookup(table.root, b"ro", old.child(old.root, b"ro"))
        d, _ = table.lookup(ro, b"d", old.child(ro.place, b"d"))
        f, _ = table.lookup(d, b"f", old.child(d.place, b"f"))
        gone, _ = table.lookup(table.root, b"gone", old.child(old.root, b"gone"))
        table.unlinked(table.root, b"gone")  # open elsewhere: kept, by the path it had
        nodes = table.reclassify_all(new)
        assert {n.nodeid for n in nodes} == {table.root.nodeid, ro.nodeid, d.nodeid, f.nodeid,
                                              gone.nodeid}
        assert all(n.place.view is new for n in nodes)
        assert f.place is new.classify((b"ro", b"d", b"f"))
        assert gone.place is new.classify((b"gone",))
        assert new.decision(f.place, "read", 0).kind == "deny"
    finally:
        table.close_all()


def test_the_daemon_answers_a_foreign_place_with_an_internal_error(tmp_path):
    # A node holding a place of another view (a bug: a handle that outlived its view) gets
    # EIO and a logged internal error: never a decision of the current policy.
    view, _ = _view(PLACES_POLICY)
    other, _ = _view(PLACES_POLICY)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f").write_text("x")
    checked = check(PLACES_POLICY.encode(), "p.fpol")
    audit = io.StringIO()
    enforcer = Enforcer(view, AuditLog(audit, checked.policy))
    kernel_end, daemon_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    logs: list[str] = []
    server = FuseServer(Channel(daemon_end.detach()), os.open(tmp_path, os.O_PATH),
                        enforcer, passthrough=False, log=logs.append)
    try:
        def ask(opcode: int, unique: int, nodeid: int, body: bytes) -> int:
            kernel_end.send(P.IN_HEADER.pack(len=P.IN_HEADER.size + len(body), opcode=opcode,
                                             unique=unique, nodeid=nodeid, uid=0, gid=0,
                                             pid=1, total_extlen=0, padding=0) + body)
            server.dispatch(server.ch.read())
            return P.OUT_HEADER.unpack(kernel_end.recv(1 << 16)).error

        assert ask(P.Opcode.LOOKUP, 1, P.ROOT_ID, b"ro\0") == 0
        ro = server.inodes.root.children[b"ro"]
        getattr_in = bytes(P.GETATTR_IN.size)
        assert ask(P.Opcode.GETATTR, 2, ro.nodeid, getattr_in) == 0
        ro.place = other.classify((b"ro",))
        assert ask(P.Opcode.GETATTR, 3, ro.nodeid, getattr_in) == -errno.EIO
        assert ask(P.Opcode.LOOKUP, 4, ro.nodeid, b"f\0") == -errno.EIO
        assert sum("internal error" in line and "ForeignPlace" in line for line in logs) == 2
        assert audit.getvalue() == ""  # nothing was decided, so nothing audited
    finally:
        server.inodes.close_all()
        kernel_end.close()
