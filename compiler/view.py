"""PolicyView: the compiled policy as the daemon asks it, one immutable value per policy.

The daemon never indexes class tables or decision words itself: it asks a view which class
a child name falls in, what a class decides for an op, whether the kernel may serve a
class's opens (passthrough) and cache its lookups and attributes, and the evaluator's exact
answer for two-path ops. Where an object falls is a `Place`: an opaque handle the view hands
out (one per class, made with the view) and the daemon stores in its nodes and only passes
back. A reload builds a new view and swaps one reference; a place belongs to the view that
made it, and another view refuses it (`ForeignPlace`, an internal error, never a decision),
so the daemon classifies its nodes again from the root.

What the kernel may cache is decided here, per class, from the class's decisions alone:

- an entry (a name -> node) may be cached when the class's `lookup` is a plain allow: no
  deny, no audit, no redirect, nothing complain mode would log. A cached entry means the
  kernel resolves the name without asking, and that is only safe when asking would always
  be answered "yes" without a trace.
- attributes may be cached when the class's `getattr` is a plain allow, for the same reason
  (`stat` is answered from the cache).
- a directory's listing may be kept (the kernel answers READDIR from its page cache) when
  the class's `readdir` is a plain allow and its entries may be cached too.

Everything else keeps timeouts of 0, so the daemon sees every such request. The kernel's
caches are shared by every user of the mount, so a decision must be a plain allow for every
subject class (LANGUAGE.md §6) to be cached: a class whose lookup or getattr depends on who
is asking is never cached.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from .classes import Class, ClassTree
from .decide import Decision, DecisionTable
from .evaluate import Evaluator, Request, Verdict
from .policy import ALLOW, DENY, USERSPACE

_MOVE_MEMO = 100_000  # verdicts remembered per view (class pairs seen by renames and links)


def plain_allow(d: Decision) -> bool:
    """Allowed with nothing to log or ask: the kernel may act without the daemon."""
    return d.kind == ALLOW and not d.audit and not d.complained


def why_not_plain(d: Decision) -> str:
    """In a few words, what keeps a decision from being a plain allow."""
    if d.kind == DENY:
        return f"denied ({d.errno or 'EACCES'})"
    if d.kind == USERSPACE:
        return f"sent to userspace ({d.mode or 'instead'})"
    if d.complained:
        return "logged by complain mode"
    if d.audit:
        return "audited"
    return "allowed"


@dataclass(frozen=True)
class CacheRule:
    """What the kernel may cache for the objects of one class, and why."""

    entries: bool
    attributes: bool
    why: str
    listing: bool = False  # a directory's listing (readdir a plain allow, entries cached)

    def timeouts(self, seconds: float) -> tuple[float, float]:
        """(entry, attribute) timeouts for a FUSE reply, given the mount's cache time."""
        return (seconds if self.entries else 0.0, seconds if self.attributes else 0.0)


def _everyone_plain(table: DecisionTable, atom: str) -> bool:
    return all(plain_allow(table.at(atom, s)) for s in range(table.nsubjects))


def _why_not(table: DecisionTable, atom: str) -> str:
    if table.depends_on_subject(atom):
        return "depends on who is asking"
    return why_not_plain(table.at(atom, 0))


def cache_rule(table: DecisionTable) -> CacheRule:
    """The cache rule of a class with this decision table (every subject class's)."""
    entries, attributes = _everyone_plain(table, "lookup"), _everyone_plain(table, "getattr")
    listing = entries and _everyone_plain(table, "readdir")
    if entries and attributes:
        why = "lookup and getattr are plain allows"
    else:
        reasons = [f"{op} {_why_not(table, op)}" for op, ok in (("lookup", entries),
                                                                 ("getattr", attributes))
                   if not ok]
        why = "; ".join(reasons) + ": the daemon must see every such request"
    return CacheRule(entries, attributes, why, listing)


def describe_cache(rule: CacheRule) -> str:
    """One line for `fpol compile --emit classes`."""
    what = {(True, True): "entries and attributes", (True, False): "entries only",
            (False, True): "attributes only", (False, False): "nothing"}
    listing = ", directory listings" if rule.listing else ""
    return f"kernel may cache: {what[rule.entries, rule.attributes]}{listing} ({rule.why})"


class ForeignPlace(RuntimeError):
    """A place given to a view that did not make it: a handle kept across a reload, or
    mixed up between policies. A bug in the daemon, never a decision (the server logs an
    internal error and answers EIO)."""


class Place:
    """Where an object falls in one view: the view that made it and a class of that view's
    tree. Opaque to the daemon, which stores it in its nodes and only hands it back to the
    view; immutable, and one per class (the view makes them all once), so asking allocates
    nothing and two places of one view are equal only when they are the same."""

    __slots__ = ("view", "cls")
    view: "PolicyView"
    cls: Class

    def __init__(self, view: "PolicyView", cls: Class):
        object.__setattr__(self, "view", view)
        object.__setattr__(self, "cls", cls)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Place is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a Place is immutable")

    def __repr__(self) -> str:
        return f"<Place: class {self.cls.id} of policy {self.view.name}>"


class PolicyView:
    """One compiled policy, as the daemon asks it. Immutable once built.

    Classes are `Place`s, handed out by this view and taken back only by it: every method
    that is given one refuses a place of another view (`ForeignPlace`)."""

    def __init__(self, tree: ClassTree, sha256: Optional[str] = None):
        self.tree = tree
        self.policy = tree.policy
        self.name = self.policy.name
        self.sha256 = sha256
        self._fold = self.policy.case_insensitive
        self.subjects = tree.subjects
        self._evaluator = Evaluator(self.policy)
        self._cache = tuple(cache_rule(c.table) for c in tree.classes)
        self._passthrough = tuple(self._allows_passthrough(c.table) for c in tree.classes)
        # One place per class, indexed like the tree's classes, made once.
        self.places = tuple(Place(self, c) for c in tree.classes)
        self.root = self.places[0]
        self._moves: dict[tuple[str, Place, Place, int], Verdict] = {}

    def _foreign(self, place: object) -> ForeignPlace:
        return ForeignPlace(f"{place!r} given to the view of policy {self.name} "
                            f"({self.sha256 or 'no digest'}), which did not make it")

    # --- classes -----------------------------------------------------------------------

    def child(self, place: Place, name: bytes) -> Place:
        if place.view is not self:
            raise self._foreign(place)
        return self.places[place.cls.child(name, self._fold)]

    def classify(self, comps: tuple[bytes, ...]) -> Place:
        place = self.root
        for name in comps:
            place = self.places[place.cls.child(name, self._fold)]
        return place

    def number(self, place: Place) -> int:
        """The class's number in the tree, which the compiled objects name their tables and
        instances by (a fuse-bpf lookup reply names the child's instance). For that use at
        once: the daemon keeps the place, never the number."""
        if place.view is not self:
            raise self._foreign(place)
        return place.cls.id

    def __len__(self) -> int:
        return len(self.places)

    # --- decisions -----------------------------------------------------------------------

    def subject(self, uid: int, gid: int) -> int:
        """The subject class of a requester (its fsuid and fsgid), by number: asked anew for
        every request and never stored, so it needs no handle of its own."""
        return self.subjects.classify(uid, gid)

    def decision(self, place: Place, atom: str, subject: int) -> Decision:
        if place.view is not self:
            raise self._foreign(place)
        return place.cls.table.at(atom, subject)

    def plain_allow(self, place: Place, atom: str) -> bool:
        """A plain allow for every subject class: what the kernel may do for anyone (a
        cached entry, a passthrough read, a close without FLUSH) without asking."""
        if place.view is not self:
            raise self._foreign(place)
        table = place.cls.table
        return all(plain_allow(table.at(atom, s)) for s in range(table.nsubjects))

    def two_path(self, op: str, src: tuple, dst: tuple, uid: int = 0, gid: int = 0) -> Verdict:
        """rename / link / copy_file_range with full paths: the evaluator's exact answer."""
        return self._evaluator.evaluate(Request(op, src, dst, uid=uid, gid=gid))

    def move(self, op: str, src: tuple, dst: tuple, src_place: Place, dst_place: Place,
             uid: int = 0, gid: int = 0) -> Verdict:
        """two_path for a caller that knows both ends' classes. The verdict depends on the
        paths only through their classes (a class fixes the decision of every op on its
        objects and on everything below them, which is all "no gain by moving" compares)
        and on the requester only through its subject class, so it is worked out once per
        (op, classes, subject) and addressed to this request."""
        if src_place.view is not self:
            raise self._foreign(src_place)
        if dst_place.view is not self:
            raise self._foreign(dst_place)
        request = Request(op, src, dst, uid=uid, gid=gid)
        key = (op, src_place, dst_place, self.subject(uid, gid))
        v = self._moves.get(key)
        if v is None:
            if len(self._moves) >= _MOVE_MEMO:
                self._moves.clear()
            v = self._moves[key] = self._evaluator.evaluate(request)
        return replace(v, request=request)

    # --- what the kernel may do without the daemon --------------------------------------

    def cache(self, place: Place) -> CacheRule:
        if place.view is not self:
            raise self._foreign(place)
        return self._cache[place.cls.id]

    def passthrough(self, place: Place) -> bool:
        """May opens of this class's files be handed to the kernel? Only when its read and
        its write decisions are each a plain allow or a deny, so that every open of one
        file gets the same I/O mode (the kernel refuses to mix passthrough and
        daemon-served opens of one file). A class that audits writes has its reads served
        by the daemon too. The I/O mode is the file's, whoever opens it, so this holds for
        every subject class and the read and write decisions must not depend on who asks
        (a passthrough handle is not asked again, whoever ends up holding it)."""
        if place.view is not self:
            raise self._foreign(place)
        return self._passthrough[place.cls.id]

    @staticmethod
    def _allows_passthrough(table: DecisionTable) -> bool:
        for atom in ("read", "write"):
            if table.depends_on_subject(atom):
                return False
            d = table.at(atom, 0)
            if not plain_allow(d) and d.kind != DENY:
                return False
        return True
