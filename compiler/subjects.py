"""Who is asking (LANGUAGE.md §6): the requester's fsuid and fsgid, in the few classes a
policy's rules can tell apart.

The uid axis is cut at every bound of every `uid` item of every rule (`by` and `except
by`), and the gid axis likewise, into intervals; a cell is one uid interval by one gid
interval, and every requester in a cell is matched by exactly the same rules. Cells matched
by the same rules form one *subject class*. A decision is then one table lookup: class
tree node x subject class x atom. A policy without subject conditions has one subject
class, and its tables and generated code are what they were before subjects existed.

Subject class 0 holds uid 0, gid 0 (what a request without `--uid`/`--gid` is made by).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, replace

from .memo import derived
from .policy import USERSPACE, Policy, Rule

ID_LIMIT = 1 << 32  # ids are 32-bit; the largest a rule may name is 2^32-2 ((uid_t)-1 is none)


@dataclass(frozen=True)
class SubjectClass:
    id: int
    cells: tuple[tuple[int, int], ...]  # (uid interval, gid interval), row-major order
    uid: int  # a requester in the class (the first cell's lowest ids)
    gid: int
    rules: frozenset[int]  # the subject-conditioned rules that apply to it


@dataclass(frozen=True)
class Partition:
    uid_starts: tuple[int, ...]  # interval i is [uid_starts[i], uid_starts[i+1] - 1]
    gid_starts: tuple[int, ...]
    grid: tuple[int, ...]  # [uid interval * len(gid_starts) + gid interval] -> subject class
    classes: tuple[SubjectClass, ...]
    conditional: frozenset[int]  # the rules whose application depends on the subject

    def __len__(self) -> int:
        return len(self.classes)

    def classify(self, uid: int, gid: int) -> int:
        """The subject class of requester `uid`, `gid`."""
        if len(self.classes) == 1:
            return 0
        ui = bisect_right(self.uid_starts, uid) - 1
        gi = bisect_right(self.gid_starts, gid) - 1
        return self.grid[ui * len(self.gid_starts) + gi]

    def applies(self, rule: Rule, subject: int) -> bool:
        """Does `rule`'s subject condition hold for subject class `subject`?"""
        return rule.index not in self.conditional or rule.index in self.classes[subject].rules

    def select(self, rules: list[Rule], subject: int) -> list[Rule]:
        """The rules of `rules` that apply to subject class `subject`."""
        if not self.conditional:
            return rules
        held = self.classes[subject].rules
        return [r for r in rules if r.index not in self.conditional or r.index in held]

    def _gid_spans(self, gis) -> list[str]:
        """Gid intervals as few spans as they make (adjacent ones joined)."""
        spans: list[list[int]] = []
        for gi in sorted(gis):
            if spans and spans[-1][1] == gi - 1:
                spans[-1][1] = gi
            else:
                spans.append([gi, gi])
        return [_span("", self.interval("gid", a)[0], self.interval("gid", b)[1])
                for a, b in spans]

    def interval(self, axis: str, i: int) -> tuple[int, int]:
        starts = self.uid_starts if axis == "uid" else self.gid_starts
        high = starts[i + 1] - 1 if i + 1 < len(starts) else ID_LIMIT - 1
        return starts[i], high

    def describe(self, subject: int) -> str:
        """`uid 10000-19999`, `uid 0-99 with gid 50`, ...: who is in the class."""
        if len(self.classes) == 1:
            return "everyone"
        cells = self.classes[subject].cells
        ngids = len(self.gid_starts)
        by_uid: dict[int, list[int]] = {}
        for ui, gi in cells:
            by_uid.setdefault(ui, []).append(gi)
        # Runs of uid intervals with the same gid intervals read as one item.
        items: list[tuple[int, int, tuple[int, ...]]] = []
        for ui in sorted(by_uid):
            gis = tuple(by_uid[ui])
            if items and items[-1][1] == ui - 1 and items[-1][2] == gis:
                items[-1] = (items[-1][0], ui, gis)
            else:
                items.append((ui, ui, gis))
        texts = []
        for first, last, gis in items:
            uids = _span("uid", self.interval("uid", first)[0], self.interval("uid", last)[1])
            if len(gis) == ngids:
                texts.append(uids)
                continue
            inside = self._gid_spans(gis)
            outside = self._gid_spans([gi for gi in range(ngids) if gi not in gis])
            if len(outside) < len(inside):  # fewer words to say which gids are not in it
                gids = "gid not " + ", ".join(outside)
            else:
                gids = "gid " + ", ".join(inside)
            texts.append(f"{uids} with {gids}" if uids != "any uid" else gids)
        text = "; ".join(texts)
        return text if len(text) <= 200 else text[:197] + "..."


def _span(axis: str, low: int, high: int) -> str:
    """`uid 5`, `uid 5-9`, `any uid` (with axis "": `5`, `5-9`)."""
    if low == 0 and high == ID_LIMIT - 1:
        return f"any {axis}".strip()
    return f"{axis} {low}".strip() if low == high else f"{axis} {low}-{high}".strip()


def partition(policy: Policy) -> Partition:
    """The policy's subject classes (computed once per policy)."""
    return derived(policy, "_subjects", lambda: _partition(policy))


def _partition(policy: Policy) -> Partition:
    conditional = [r for r in policy.rules if r.has_subject]
    if not conditional:
        return EVERYONE
    uid_cuts, gid_cuts = {0}, {0}
    for r in conditional:
        for s in r.subjects + r.except_subjects:
            cuts = uid_cuts if s.kind == "uid" else gid_cuts
            cuts.add(s.low)
            if s.high + 1 < ID_LIMIT:
                cuts.add(s.high + 1)
    uid_starts, gid_starts = tuple(sorted(uid_cuts)), tuple(sorted(gid_cuts))

    # Per interval, the rules (as bits) one of whose items covers it.
    def covering(starts: tuple[int, ...], kind: str, items_of) -> list[int]:
        bits = [0] * len(starts)
        for r in conditional:
            for s in items_of(r):
                if s.kind != kind:
                    continue
                lo = bisect_right(starts, s.low) - 1
                hi = bisect_right(starts, s.high) - 1
                for i in range(lo, hi + 1):
                    bits[i] |= 1 << r.index
        return bits

    by_uid = covering(uid_starts, "uid", lambda r: r.subjects)
    by_gid = covering(gid_starts, "gid", lambda r: r.subjects)
    not_uid = covering(uid_starts, "uid", lambda r: r.except_subjects)
    not_gid = covering(gid_starts, "gid", lambda r: r.except_subjects)
    everyone = sum(1 << r.index for r in conditional if not r.subjects)  # only `except by`

    ids: dict[int, int] = {}
    cells: list[list[tuple[int, int]]] = []
    grid = []
    for ui in range(len(uid_starts)):
        for gi in range(len(gid_starts)):
            held = (by_uid[ui] | by_gid[gi] | everyone) & ~(not_uid[ui] | not_gid[gi])
            sid = ids.get(held)
            if sid is None:
                sid = ids[held] = len(cells)
                cells.append([])
            cells[sid].append((ui, gi))
            grid.append(sid)
    classes = []
    for held, sid in ids.items():
        ui, gi = cells[sid][0]
        rules = frozenset(i for i in range(held.bit_length()) if held >> i & 1)
        classes.append(SubjectClass(sid, tuple(cells[sid]), uid_starts[ui], gid_starts[gi], rules))
    classes.sort(key=lambda c: c.id)
    return Partition(uid_starts, gid_starts, tuple(grid), tuple(classes),
                     frozenset(r.index for r in conditional))


EVERYONE = Partition((0,), (0,), (0,), (SubjectClass(0, ((0, 0),), 0, 0, frozenset()),),
                     frozenset())

# Where the credentials are read: by the fuse-bpf programs themselves, or by the daemon.
CREDENTIALS = ("kernel", "daemon")

# Ops whose answers the kernel caches for every user alike (dentries, attributes): a
# program asked once, by one requester, is not asked again for the next.
SHARED_CACHE_ATOMS = ("lookup", "getattr")


def realise_subjects(tree, credentials: str):
    """The class tree as the fuse-bpf struct_ops object realises who is asking.

    `kernel`: the programs read the requester's fsuid and fsgid, but the kernel keeps the
    dentries and attributes a lookup or getattr produced for every later requester, so an
    atom of SHARED_CACHE_ATOMS whose decision depends on who asks goes to userspace
    `instead`, where the daemon decides each request with its own uid and gid and lets
    nothing be cached (as Android's MediaProvider does). `daemon` (no
    bpf_get_current_task_btf: a kernel without CONFIG_BPF_EVENTS, a loader without
    CAP_PERFMON): every atom whose decision depends on who asks goes to the daemon, and the
    tree has one subject class. Either way never an allow the policy would not give."""
    from .classes import ClassTree
    from .decide import ATOM_INDEX, Decision, DecisionTable, NATOMS

    nsubjects = len(tree.subjects)
    if nsubjects == 1:
        return tree
    def ask(decisions) -> Decision:
        # Named after the first rule with a subject condition among those deciding, so the
        # generated code says which rule sends it to the daemon.
        rules = sorted({i for d in decisions for i in d.rules})
        by = [i for i in rules if tree.policy.rules[i].has_subject]
        return Decision(USERSPACE, mode="instead", rules=tuple(by[:1] or rules[:1]))

    movable = range(NATOMS) if credentials == "daemon" else \
        [ATOM_INDEX[a] for a in SHARED_CACHE_ATOMS]
    interned: dict = {}
    row_of: dict = {}  # equal rows are one object, as in classes.tables
    classes = []
    for c in tree.classes:
        per = [list(t) for t in c.table.per_subject()]
        for i in movable:
            if any(t[i] != per[0][i] for t in per):
                sent = ask([t[i] for t in per])
                for t in per:
                    t[i] = sent
        rows = [row_of.setdefault(tuple(t), tuple(t))
                for t in (per[:1] if credentials == "daemon" else per)]
        table = DecisionTable(rows)
        classes.append(replace(c, table=interned.setdefault(table, table)))
    return ClassTree(tree.policy, tuple(classes), tree.unminimised,
                     partition=EVERYONE if credentials == "daemon" else tree.partition)


def sends_to_daemon(tree, credentials: str) -> bool:
    """Does the struct_ops realisation of who is asking send anything to the daemon (so a
    fuse-bpf mount of it needs one)?"""
    if len(tree.subjects) == 1:
        return False
    realised = realise_subjects(tree, credentials)
    return any(d.kind == USERSPACE for c in realised.classes for d in c.table)


def daemon_classes(tree) -> int:
    """How many classes send some op to the daemon only because it depends on who asks."""
    if len(tree.subjects) == 1:
        return 0
    return sum(1 for c in tree.classes if not c.table.uniform())


__all__ = ["CREDENTIALS", "EVERYONE", "ID_LIMIT", "SHARED_CACHE_ATOMS", "Partition",
           "SubjectClass", "daemon_classes", "partition", "realise_subjects", "sends_to_daemon"]
