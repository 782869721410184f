"""ClassTree -> the template context: everything the generated C needs, as data.

Decisions are packed into 32-bit words (kind, userspace mode, audit, errno,
deciding rule) and stored in deduplicated rows, one row per distinct decision
table; classes index rows. Literal child names live in a table sorted by
(class, FNV-1a hash) with the name bytes in a pool, so a transition costs one
hash and a binary search however many names a policy has; name globs compile
to small match functions tested only by the classes that have them.

Which fuse_ops hooks each class needs (and no more), which programs can be
shared between instances, and the safety facts the realisation needs for new
objects and moves ("no gain by moving") are decided here as well.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence

from fpol import __version__

from . import abi
from . import ops
from .abi import MAX_DEPTH  # path components the check object's requests carry
from .classes import Class, ClassTree
from .paths import glob_mask
from .decide import Decision, DecisionTable
from .driver import no_collections
from .memo import ByValue
from .moves import AlikeSlots, Strictness, alike_slots
from .policy import Policy
from .subjects import realise_subjects


FNV_OFFSET, FNV_PRIME = 0x811C9DC5, 0x01000193


def fnv1a(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFF
    return h


def pack(d: Decision, rule_number: Optional[int]) -> int:
    """The decision word of `d` (compiler/abi.py has the layout)."""
    return abi.pack(d.kind, d.mode, d.audit, d.complained, d.errno, rule_number)


unpack = abi.unpack


MAX_PROBE = 8


def literal_slot(cls: int, name_hash: int, size: int) -> int:
    """Home slot of (class, name hash) in the literal table; the C computes the same."""
    return (name_hash ^ ((cls * 0x9E3779B1) & 0xFFFFFFFF)) & (size - 1)


def _literal_table(literals: list) -> tuple[list, int]:
    """An open-addressing table of the literal transitions, as small as keeps every probe
    sequence within MAX_PROBE: a transition costs one hash and a few comparisons however
    many names the policy has, and the verifier sees a loop of at most MAX_PROBE steps."""
    size = 1
    while size < 2 * len(literals):
        size *= 2
    # Home slots are powers of two apart: the home at any size is the home at 2**32, masked.
    homes = [literal_slot(e.cls, e.hash, 1 << 32) for e in literals]
    while True:
        last = size >= 1 << 24  # the table is made at this size whatever its probes
        mask = size - 1
        table: list = [None] * size
        longest = 1
        for e, home in zip(literals, homes):
            for k in range(size):
                if table[(home + k) & mask] is None:
                    table[(home + k) & mask] = e
                    if k >= longest:
                        longest = k + 1
                    break
            if longest > MAX_PROBE and not last:
                break  # too small: no need to place the rest
        if longest <= MAX_PROBE or last:
            return table, longest
        size *= 2


@dataclass
class Row:
    """One distinct decision table: (word, atoms, what decided) per distinct word, the most
    common first; the C fills the row with the first word and names the atoms of the others."""

    id: int
    groups: list[tuple[int, tuple[str, ...], str]]  # (rows with one layout share its atoms)


def _row(rid: int, reps: tuple, alike: AlikeSlots, words: dict[int, tuple[Decision, int, str]],
         layouts: dict[tuple[int, ...], list[tuple[int, tuple[str, ...]]]]) -> Row:
    """`reps`: the row's decision per group of alike slots; `words`: per decision object (by
    id), its word and what decided it. Equal decisions have equal words, so grouping the
    slots by word groups equal decisions. Rows whose groups share words alike have one
    layout (`layouts`, by which groups share)."""
    of_group = list(map(words.__getitem__, map(id, reps)))
    first: dict[int, int] = {}  # word -> its first group
    pattern = tuple([first.setdefault(word, g) for g, (_, word, _) in enumerate(of_group)])
    layout = layouts.get(pattern)
    if layout is None:
        layout = layouts[pattern] = _layout(pattern, alike)
    return Row(rid, [(of_group[g][1], atoms, of_group[g][2]) for g, atoms in layout])


def _layout(pattern: tuple[int, ...], alike: AlikeSlots) -> list[tuple[int, tuple[str, ...]]]:
    """Per word of a row whose groups share words as `pattern` says (each group's first
    group with its word): that first group (its decision says what decided) and the
    word's atoms; the most common word first, then by first slot."""
    slots_of: dict[int, list[int]] = {}
    for g, f in enumerate(pattern):
        slots_of.setdefault(f, []).extend(alike.slots[g])
    order = sorted(slots_of, key=lambda f: (-len(slots_of[f]), alike.first[f]))
    return [(f, tuple([ops.ATOMS[i] for i in sorted(slots_of[f])])) for f in order]


@dataclass
class LiteralEntry:
    cls: int
    hash: int
    offset: int
    length: int
    child: int
    inherit_ok: bool
    name: str  # for the comment


@dataclass
class GlobFunc:
    id: int
    text: str
    segments: list[bytes]  # the glob split at `*`


@dataclass
class GlobClass:
    cls: int
    globs: list[int]  # GlobFunc ids, bit i of the mask = globs[i]
    masks: list[tuple[int, int, bool]]  # (mask, child, inherit_ok)


@dataclass
class GlobMask:
    """One glob transition: a name of class `cls` matching exactly the globs of `mask`."""

    cls: int
    mask: int
    child: int
    inherit_ok: bool
    names: str  # the globs of the mask, for the comment


# Name globs one class may test: bit i of a 64-bit mask is its i-th glob.
MAX_CLASS_GLOBS = 64


@dataclass
class ClassInfo:
    id: int
    row: int
    default_child: int
    default_inherit_ok: bool
    daemon_lookup: bool  # objects of this class have ops the daemon performs (userspace instead)
    instance: str
    example: str
    glob_first: int = 0  # its globs: fpol_class_globs[glob_first, + nglobs)
    nglobs: int = 0
    mask_first: int = 0  # its masks: fpol_glob_masks[mask_first, + nmasks), sorted by mask
    nmasks: int = 0


@dataclass
class Program:
    """One BPF program: a hook implementation some instances point at."""

    name: str
    hook: str  # fuse_ops member, e.g. open_prefilter
    kind: str  # object | lookup | lookup_post | create | remove | rename | link | cfr | fsync | default | noop
    cls: int  # the class whose tables the program reads
    classes: list[int]  # every class (instance) using it
    op: str = ""
    params: str = ""
    # default_filter: (opcode, word, op, slot)
    switch: list[tuple[int, int, str, str]] = field(default_factory=list)


@dataclass
class Instance:
    cls: int
    name: str
    programs: list[Program]  # in member order, each in the member it is made for (its hook)
    example: str

    @property
    def members(self) -> list[tuple[str, str]]:
        """(fuse_ops member, program name) per member set."""
        return [(p.hook, p.name) for p in self.programs]


# The fuse_ops members fpol implements, with their prefilter parameters (spec §4),
# how the decision is made, and the op (or ops) they judge.
HOOKS: list[tuple[str, str, str, str]] = [
    # member, parameters after meta, kind, op
    ("open", "struct fuse_open_in *in", "object", "open"),
    ("opendir", "struct fuse_open_in *in", "object", "opendir"),
    ("create_open", "struct fuse_create_in *in, struct fuse_buffer *name", "create", "create"),
    ("release", "struct fuse_release_in *in", "object", "release"),
    ("releasedir", "struct fuse_release_in *in", "object", "releasedir"),
    ("flush", "struct fuse_flush_in *in", "object", "flush"),
    ("lseek", "struct fuse_lseek_in *in", "object", "lseek"),
    ("copy_file_range", "struct fuse_copy_file_range_in *in", "cfr", "copy_file_range"),
    ("fsync", "struct fuse_fsync_in *in", "object", "fsync"),
    ("dir_fsync", "struct fuse_fsync_in *in", "object", "fsyncdir"),
    ("getxattr", "struct fuse_getxattr_in *in, struct fuse_buffer *name", "object", "getxattr"),
    ("listxattr", "struct fuse_getxattr_in *in", "object", "listxattr"),
    ("setxattr", "struct fuse_setxattr_in *in, struct fuse_buffer *name, struct fuse_buffer *value",
     "object", "setxattr"),
    ("removexattr", "struct fuse_buffer *name", "object", "removexattr"),
    ("read_iter", "struct fuse_read_in *in", "object", "read"),
    ("write_iter", "struct fuse_write_in *in", "object", "write"),
    ("file_fallocate", "struct fuse_fallocate_in *in", "object", "fallocate"),
    ("lookup", "struct fuse_buffer *name", "lookup", "lookup"),
    ("mknod", "struct fuse_mknod_in *in, struct fuse_buffer *name", "create", "mknod"),
    ("mkdir", "struct fuse_mkdir_in *in, struct fuse_buffer *name", "create", "mkdir"),
    ("rmdir", "struct fuse_buffer *name", "remove", "rmdir"),
    ("rename2", "struct fuse_rename2_in *in, struct fuse_buffer *old_name, struct fuse_buffer *new_name",
     "rename", "rename"),
    ("rename", "struct fuse_rename_in *in, struct fuse_buffer *old_name, struct fuse_buffer *new_name",
     "rename", "rename"),
    ("unlink", "struct fuse_buffer *name", "remove", "unlink"),
    ("link", "struct fuse_link_in *in, struct fuse_buffer *name", "link", "link"),
    ("getattr", "struct fuse_getattr_in *in", "object", "getattr"),
    ("setattr", "struct fuse_setattr_in *in", "object", "setattr"),
    ("statfs", "", "object", "statfs"),
    ("get_link", "struct fuse_buffer *name", "object", "readlink"),
    ("symlink", "struct fuse_buffer *name, struct fuse_buffer *path", "create", "symlink"),
    ("readdir", "struct fuse_read_in *in", "object", "readdir"),
    ("access", "struct fuse_access_in *in", "object", "access"),
]

# FUSE opcodes of the ops (include/uapi/linux/fuse.h), for default_filter and audit events.
OPCODES = {
    "lookup": 1, "getattr": 3, "setattr": 4, "readlink": 5, "symlink": 6, "mknod": 8,
    "mkdir": 9, "unlink": 10, "rmdir": 11, "rename": 12, "link": 13, "open": 14,
    "read": 15, "write": 16, "statfs": 17, "release": 18, "fsync": 20, "setxattr": 21,
    "getxattr": 22, "listxattr": 23, "removexattr": 24, "flush": 25, "opendir": 27,
    "readdir": 28, "releasedir": 29, "fsyncdir": 30, "access": 34, "create": 35,
    "fallocate": 43, "lseek": 46, "copy_file_range": 47,
}

# The op numbering the check object's requests use: position in ops.SINGLE_OPS.
OP_NUMBER = {op: i for i, op in enumerate(ops.SINGLE_OPS)}
SLOT = {atom: i for i, atom in enumerate(ops.ATOMS)}


@dataclass
class Model:
    policy: Policy
    tree: ClassTree
    abi: str
    version: str
    source_name: str
    rules: list[tuple[int, str]]  # (line, text) per rule index
    rows: list[Row]
    classes: list[ClassInfo]
    literals: list[LiteralEntry]
    pool: bytes
    globs: list[GlobFunc]
    glob_classes: list[GlobClass]
    atoms: list[str]
    slots: dict
    op_numbers: dict
    opcodes: dict
    max_depth: int
    literal_table: list  # open addressing: slot -> LiteralEntry or None
    max_probe: int  # the longest probe sequence in it
    pool_size: int
    case_insensitive: bool
    any_audit: bool
    open_slots: list[int]  # index r | w << 1 | x << 2 -> slot
    create_slots: list[int]  # index r -> slot
    access_slots: list[int]  # index r | w << 1 | x << 2 -> slot
    cfr_dst_everywhere: bool  # every class allows copy_file_range's destination side
    # Glob transitions as data: per class, a run of glob ids and a run of masks.
    class_globs: list = field(default_factory=list)  # (first class, glob id), runs in class order
    glob_runs: list = field(default_factory=list)  # (offset, classes testing that run)
    glob_masks: list = field(default_factory=list)  # GlobMask in class order, masks sorted
    max_class_globs: int = 0
    mask_search: int = 0  # binary search steps that find any mask of a class
    subjects: "SubjectTables" = None  # type: ignore[assignment]  # who is asking, as data
    # The struct_ops object's programs and instances are planned when first asked for
    # (`programs`, `instances`): the check object does not need them, and at 10,000 rules
    # planning them is most of lowering. Instance names are known before (ClassInfo).
    make_plan: Optional[Callable[[], tuple[list, list]]] = None
    planned: Optional[tuple[list, list]] = None

    @property
    def programs(self) -> list[Program]:
        return self._plan()[0]

    @property
    def instances(self) -> list[Instance]:
        return self._plan()[1]

    def _plan(self) -> tuple[list, list]:
        if self.planned is None:
            assert self.make_plan is not None
            with no_collections():
                self.planned, self.make_plan = self.make_plan(), None
        return self.planned


@dataclass
class SubjectTables:
    """Who is asking, for the C (compiler/subjects.py): the uid and gid interval starts, the
    subject class of each (uid interval, gid interval) cell, and per class of the tree its
    row set (the row of each subject class). One subject class: everything empty, and
    classes index rows directly."""

    count: int
    uid_starts: list[int]
    gid_starts: list[int]
    grid: list[int]  # [uid interval * len(gid_starts) + gid interval] -> subject class
    rowsets: list[tuple[int, ...]]
    described: list[str]  # who is in each subject class, for comments

    def search_steps(self, starts: list[int]) -> int:
        """Binary search steps that find any interval of `starts`."""
        return max(1, len(starts).bit_length())


def _subject_tables(tree: ClassTree, rowsets: list[tuple[int, ...]]) -> SubjectTables:
    part = tree.subjects
    if len(part) == 1:
        return SubjectTables(1, [], [], [], [], [])
    return SubjectTables(len(part), list(part.uid_starts), list(part.gid_starts), list(part.grid),
                         rowsets, [part.describe(s) for s in range(len(part))])


def _bits(r: int, w: int, x: int) -> str:
    return ("r" if r else "") + ("w" if w else "") + ("x" if x else "") or "-"


def _detail_slots():
    open_slots, access_slots = [], []
    for b in range(8):
        r, w, x = b & 1, b >> 1 & 1, b >> 2 & 1
        open_slots.append(SLOT.get(f"open:{_bits(r or not w, w, x)}"))
        access_slots.append(SLOT[f"access:{_bits(r, w, x)}"])
    return open_slots, [SLOT["create:w"], SLOT["create:rw"]], access_slots


OPEN_SLOTS, CREATE_SLOTS, ACCESS_SLOTS = _detail_slots()


def _daemon_lookup(rows: list[tuple], alike: AlikeSlots) -> list[bool]:
    """Per row: ops redirected to userspace reach the daemon carrying the object's nodeid,
    which only the daemon can assign (the kernel's own lookups give nodeid 0): `instead`,
    as ordinary requests it must resolve; `before` and `after`, as filter requests whose
    events must name the object's path. So the daemon must look such objects up."""
    # every op but lookup: one slot per group of alike slots stands for the group's
    firsts = [alike.first[g] for g, slots in enumerate(alike.slots) if slots != (SLOT["lookup"],)]
    if not firsts:
        return [False] * len(rows)
    pick = operator.itemgetter(*firsts) if len(firsts) > 1 else \
        operator.itemgetter(slice(firsts[0], firsts[0] + 1))
    return ["userspace" in [d.kind for d in pick(row)] for row in rows]


def _daemon_named(classes, strict, row_daemon: list[bool],
                  class_rows: list[tuple[int, ...]]) -> list[bool]:
    """Per class: must the daemon look its objects up (so they carry a nodeid it knows)?

    Objects the kernel looks up itself have nodeid 0, and a request the daemon gets for a
    child of such a directory (a LOOKUP sent to userspace) names nothing it can resolve. So
    the daemon looks up an object when its own ops come to the daemon `instead`
    (_daemon_lookup), and also every directory on the way to one whose lookups come to the
    daemon: every class with a child class whose lookup is redirected to userspace, or
    whose objects the daemon looks up, transitively."""
    named = [any(map(row_daemon.__getitem__, class_rows[c.id])) for c in classes]
    parents: dict[int, list[int]] = {}
    for c in classes:
        for k in strict.targets(c):
            parents.setdefault(k, []).append(c.id)
    lookup = SLOT["lookup"]
    todo = [c.id for c in classes
            if named[c.id] or any(r[lookup].kind == "userspace" for r in c.table.rows)]
    seen = set(todo)
    while todo:
        for p in parents.get(todo.pop(), ()):
            named[p] = True
            if p not in seen:
                seen.add(p)
                todo.append(p)
    return named


def _instance_name(policy: Policy, cls: int) -> str:
    return f"{policy.name}_{cls}"


@no_collections()
def lower(tree: ClassTree, abi: Optional[str] = None, source_name: Optional[str] = None,
          credentials: Optional[str] = None) -> Model:
    """The template context of `tree`. For the struct_ops object, `credentials` says who
    reads the requester's credentials for subject conditions: its programs (`kernel`) or
    the daemon (`daemon`), as subjects.realise_subjects realises them; None (the check
    object) keeps the policy's own decisions for every subject."""
    if credentials is not None:
        tree = realise_subjects(tree, credentials)
    policy = tree.policy
    abi = abi or policy.abi
    source_name = source_name or policy.file
    strict = Strictness(tree)
    classes = tree.classes

    rows, row_tables, class_rows, class_row, rowsets = _rows(tree, source_name)
    inherit = _inherit_ok(classes, strict)
    literals, pool = _literals(classes, inherit)
    table, probes = _literal_table(literals)
    globs, glob_classes = _glob_functions(classes, inherit)
    glob_data = _glob_data(globs, glob_classes)

    alike = alike_slots(tree)
    daemon_lookup = _daemon_named(classes, strict, _daemon_lookup(row_tables, alike), class_rows)
    infos = [ClassInfo(c.id, class_row[c.id], c.default, inherit[c.id][-1], daemon_lookup[c.id],
                       _instance_name(policy, c.id), c.example.decode("utf-8", "backslashreplace"))
             for c in classes]
    for info in infos:
        glob_run = glob_data.runs.get(info.id)
        if glob_run:
            info.glob_first, info.nglobs, info.mask_first, info.nmasks = glob_run

    make_plan = _programs(tree, abi, infos, strict, inherit)
    return Model(
        policy=policy, tree=tree, abi=abi, version=__version__,
        source_name=source_name or policy.file,
        rules=[(r.line, r.text) for r in policy.rules],
        rows=rows, classes=infos, literals=literals, pool=bytes(pool), globs=globs,
        glob_classes=glob_classes, make_plan=make_plan, atoms=list(ops.ATOMS), slots=SLOT, op_numbers=OP_NUMBER,
        opcodes=OPCODES, max_depth=MAX_DEPTH, literal_table=table, max_probe=probes,
        pool_size=max(1, len(pool)),
        case_insensitive=policy.case_insensitive,
        any_audit=any(d.audit for c in classes for d in c.table),
        open_slots=OPEN_SLOTS, create_slots=CREATE_SLOTS, access_slots=ACCESS_SLOTS,
        cfr_dst_everywhere=all(d.kind == "allow" and not d.audit
                               for c in classes for d in c.decisions("copy_file_range:dst")),
        subjects=_subject_tables(tree, rowsets),
        class_globs=glob_data.class_globs, glob_runs=sorted(glob_data.glob_runs.values()),
        glob_masks=glob_data.glob_masks,
        max_class_globs=max((len(gc.globs) for gc in glob_classes), default=0),
        mask_search=glob_data.mask_search,
    )


def _rows(tree: ClassTree, source_name: str):
    """Decision rows, deduplicated: one row per distinct decision table of one subject
    class. A class has a row per subject class: with one subject class (no `by` rules),
    its row; with several, a "row set" (the row of each subject class), and row sets are
    deduplicated too. -> (rows, the table of each row, each class's rows, each class's
    row or row set, the row sets)."""
    policy = tree.policy
    who_cache: dict[Optional[int], str] = {}

    def who(rule: Optional[int]) -> str:
        text = who_cache.get(rule)
        if text is None:
            text = who_cache[rule] = f"{source_name}:{policy.rules[rule].line} {policy.rules[rule].text}" \
                if rule is not None else f"default {policy.default.text}"
        return text

    nsubjects = len(tree.subjects)
    row_of_table = ByValue()  # table (or row) -> its row number
    rows: list[Row] = []
    row_tables: list[tuple] = []
    class_rows: list[tuple[int, ...]] = []

    # Each decision object's word and comment, once (rows share their decision objects;
    # an entry keeps its object alive, so the id is not reused).
    words: dict[int, tuple[Decision, int, str]] = {}
    layouts: dict[tuple[int, ...], list[tuple[int, tuple[str, ...]]]] = {}

    alike = alike_slots(tree)

    def new_row(t: tuple) -> int:
        reps = alike.pick(t)
        for d in reps:
            if id(d) not in words:
                rule = d.rules[0] if d.rules else None
                words[id(d)] = (d, pack(d, rule), f"{d.short()} ({who(rule)})")
        rows.append(_row(len(rows), reps, alike, words, layouts))
        row_tables.append(t)
        return len(rows) - 1

    for c in tree.classes:
        per_subject: list[tuple]
        if nsubjects == 1:
            per_subject = [c.table]  # the table is its one row (and hashes quicker)
        else:
            per_subject = c.table.per_subject()
        ids = []
        for t in per_subject:
            ids.append(row_of_table.get(t, new_row))
        class_rows.append(tuple(ids))
    rowsets: list[tuple[int, ...]] = []
    if nsubjects == 1:
        class_row = [ids[0] for ids in class_rows]
    else:
        rowset_ids: dict[tuple[int, ...], int] = {}
        class_row = []
        for rowset in class_rows:
            n = rowset_ids.get(rowset)
            if n is None:
                n = rowset_ids[rowset] = len(rowsets)
                rowsets.append(rowset)
            class_row.append(n)
    return rows, row_tables, class_rows, class_row, rowsets


def _inherit_ok(classes, strict: Strictness) -> list[tuple[bool, ...]]:
    """Per class, per transition (its literals', then its masks', then its default's child):
    may the child keep the class's instance, being at least as strict (moves.Strictness)."""
    out = []
    at_least = strict.at_least_as_strict
    for c in classes:
        cid = c.id
        out.append((*[at_least(cid, t) for _, t in c.literals],
                    *[at_least(cid, t) for _, t in c.masks], at_least(cid, c.default)))
    return out


def _literals(classes, inherit: list[tuple[bool, ...]]) -> tuple[list[LiteralEntry], bytearray]:
    """Literal transitions, sorted, and the pool of their names."""
    literals: list[LiteralEntry] = []
    pool = bytearray()
    pool_index: dict[bytes, tuple[int, int]] = {}  # name -> (offset, hash)
    for c in classes:
        for (name, child), ok in zip(c.literals, inherit[c.id]):
            at = pool_index.get(name)
            if at is None:
                at = pool_index[name] = (len(pool), fnv1a(name))
                pool += name
            off, name_hash = at
            literals.append(LiteralEntry(c.id, name_hash, off, len(name), child, ok,
                                         name.decode("utf-8", "backslashreplace")))
    literals.sort(key=lambda e: (e.cls, e.hash, e.length, e.offset))
    return literals, pool


def _glob_functions(classes, inherit: list[tuple[bool, ...]]
                    ) -> tuple[list[GlobFunc], list[GlobClass]]:
    """Glob functions (one per distinct glob) and the classes that test them."""
    glob_ids: dict[bytes, int] = {}
    globs: list[GlobFunc] = []
    glob_classes: list[GlobClass] = []
    for c in classes:
        if not c.globs:
            continue
        ids = []
        for g in c.globs:
            gid = glob_ids.get(g.text)
            if gid is None:
                gid = glob_ids[g.text] = len(globs)
                segs = g.text.split(b"*")
                globs.append(GlobFunc(gid, g.text.decode("utf-8", "backslashreplace"), segs))
            ids.append(gid)
        masks = [(m, t, ok) for (m, t), ok in zip(c.masks, inherit[c.id][len(c.literals):])]
        glob_classes.append(GlobClass(c.id, ids, masks))
    return globs, glob_classes


@dataclass
class _GlobData:
    class_globs: list[tuple[int, int]]
    glob_masks: list[GlobMask]
    runs: dict[int, tuple[int, int, int, int]]  # class -> first glob, globs, first mask, masks
    glob_runs: dict[tuple[int, ...], tuple[int, list[int]]]
    mask_search: int


def _glob_data(globs: list[GlobFunc], glob_classes: list[GlobClass]) -> _GlobData:
    """Glob transitions as data: fpol_child walks a class's globs and binary-searches its
    masks, so its code is the same size however many classes test globs."""
    data = _GlobData([], [], {}, {}, 0)
    named: dict[tuple[tuple[int, ...], int], str] = {}  # (globs, mask) -> the comment's names
    for gc in glob_classes:
        if len(gc.globs) > MAX_CLASS_GLOBS:
            raise ValueError(f"class {gc.cls} tests {len(gc.globs)} name globs "
                             f"(at most {MAX_CLASS_GLOBS})")
        key = tuple(gc.globs)
        run = data.glob_runs.get(key)
        if run is None:  # classes testing the same globs share one run
            run = data.glob_runs[key] = (len(data.class_globs), [])
            data.class_globs.extend((gc.cls, g) for g in gc.globs)
        run[1].append(gc.cls)
        data.runs[gc.cls] = (run[0], len(gc.globs), len(data.glob_masks), len(gc.masks))
        for m, target, ok in sorted(gc.masks):
            names = named.get((key, m))
            if names is None:
                names = named[(key, m)] = " & ".join(
                    f'"{globs[g].text}"' for i, g in enumerate(gc.globs) if m >> i & 1) or "no glob"
            data.glob_masks.append(GlobMask(gc.cls, m, target, ok, names))
        data.mask_search = max(data.mask_search, len(gc.masks).bit_length())
    return data


_ATOM_SLOTS = {op: [SLOT[a] for a in atoms] for op, atoms in ops.ATOMS_OF_OP.items()}


def _uniform(c: Class, op: str) -> Optional[Decision]:
    """The class's decision for `op` if it depends neither on the request's details nor on
    who is asking."""
    return _uniform_table(c.table, op)


def _uniform_table(table: DecisionTable, op: str) -> Optional[Decision]:
    return _uniform_rows(table.rows, _ATOM_SLOTS[op])


def _uniform_rows(rows: tuple, slots: list[int]) -> Optional[Decision]:
    """The decision at `slots` of every row of `rows` if they are all equal."""
    first = _uniform_in(rows[0], slots)
    if len(rows) == 1:  # (one subject class: most policies)
        return first
    if first is None or any(r is not rows[0] and _uniform_in(r, slots) != first for r in rows[1:]):
        return None
    return first


def _uniform_in(table: tuple, slots: list[int]) -> Optional[Decision]:
    first = table[slots[0]]
    for i in slots[1:]:
        d = table[i]
        if d is not first and d != first:  # decisions are mostly shared objects
            return None
    return first


def _trivial(d: Optional[Decision]) -> bool:
    return d is not None and d.kind == "allow" and not d.audit


class _Planner:
    """Chooses each instance's programs; instances share a program where it behaves the same."""

    named: list[bool]  # per class: objects the daemon must name (set by _programs)
    inherit: list[tuple[bool, ...]]  # per class, _inherit_ok's flags (set by _programs)

    def __init__(self, tree: ClassTree, abi: str, strict: "Strictness"):
        self.tree, self.abi, self.strict = tree, abi, strict
        self.classes = tree.classes
        # Object-op programs and the mkdir postfilter, by key (namespace prefilters are in
        # their step's `made`, lookup postfilters in _posts).
        self.programs: dict[tuple, Program] = {}
        self._runtime_ids: dict[tuple, int] = {}
        # Decision object (by id) -> its runtime: rows share their decision objects, and
        # this needs no Python call per one.
        self._runtime_of: dict[int, int] = {}
        self._kept: list = []  # objects whose ids key memos here, kept so no id is reused
        self.alike = alike_slots(tree)
        # A row's decisions at the object ops' slots, one per group of alike slots (those
        # stand for the others: quicker to hash).
        self._object_decisions = operator.itemgetter(*sorted(
            {self.alike.first[self.alike.group_of[i]] for i in _OBJECT_SLOTS}))
        self._members_of_table: dict[int, _ObjectMembers] = {}  # by _table_list's index
        self._members_of_projection: dict[tuple, _ObjectMembers] = {}
        # The object hooks by the slots their programs depend on (the op's, and for fsync
        # and fsyncdir both ops'), one per group of alike slots: per such set of slots, its
        # hooks (index in HOOKS, op) by their op's slots, likewise one per group.
        group_first = [self.alike.first[g] for g in self.alike.group_of]
        by_slots: dict[tuple[int, ...], dict[tuple[int, ...], list[tuple[int, str]]]] = {}
        for i, (_, _, kind, op) in enumerate(HOOKS):
            if kind == "object":
                read = _ATOM_SLOTS["fsync"] + _ATOM_SLOTS["fsyncdir"] \
                    if op in ("fsync", "fsyncdir") else _ATOM_SLOTS[op]
                own = tuple(dict.fromkeys(group_first[s] for s in _ATOM_SLOTS[op]))
                by_slots.setdefault(tuple(sorted({group_first[s] for s in read})), {}) \
                    .setdefault(own, []).append((i, op))
        # (and per set, its hooks' programs and default_filter entries by the ids of the
        # decisions there: _object_members)
        self._object_ops: list[tuple[tuple[int, ...], list[tuple[list[int], list[tuple[int, str]]]],
                                     dict]] = \
            [(slots, [(list(own), hooks) for own, hooks in by_own.items()], {})
             for slots, by_own in by_slots.items()]
        # Per atom slot, its group: what _object_step reads of a table's runtimes.
        self._group_of = self.alike.group_of
        self._words: dict[int, tuple[int, int]] = {}  # decision (by id) -> (word, runtime)
        self._answers: dict[tuple[str, str], list[int]] = {}
        self._table_index: Optional[tuple[list[DecisionTable], list[int]]] = None
        self.share: Optional[list[int]] = None  # per class, the class whose instance it uses
        self.steps: list[_NamespaceStep] = []  # the namespace hooks, in member order (prepare)
        self.questions: list[tuple[str, str]] = []  # (kind, op) each asks once per class
        self.keys: list = []  # per planned class, its key per question (prepare)
        self.post_keys: list = []  # per planned class, its lookup postfilter's key (prepare)
        self._posts: dict[int, Program] = {}  # lookup postfilters, by key
        self._globs: dict[int, tuple[tuple[bytes, ...], dict[bytes, int]]] = {}  # name_view's
        self.fresh: list[Program] = []  # made for the class being planned (all of its class)
        self._table_runtimes: Optional[list[tuple[tuple[int, ...], ...]]] = None

    def runtime(self, d: Decision) -> int:
        """What a program does with a decision, as a small number: its return code, and for
        audited decisions the event it sends (which names the rule). Programs whose decisions
        agree on this may be shared between instances even when different rules decided."""
        n = self._runtime_of.get(id(d))
        if n is None:
            keep_rule = d.audit and d.rules
            key = (d.kind, d.errno, d.mode, d.audit, d.rules[0] if keep_rule else None,
                   d.audit_rules if d.audit else (), d.complained)
            n = self._runtime_of[id(d)] = self._runtime_ids.setdefault(key, len(self._runtime_ids))
            self._kept.append(d)
        return n

    def row_runtime(self, row: tuple) -> tuple[int, ...]:
        """`runtime` of the decisions of one row, one per group of alike slots (which hold
        the same objects in every row: the group's stands for its slots')."""
        picked = self.alike.pick(row)
        known: tuple = tuple(map(self._runtime_of.get, map(id, picked)))  # None: not yet
        if None not in known:
            return known
        return tuple([self.runtime(d) if n is None else n for n, d in zip(known, picked)])

    def _table_list(self) -> tuple[list[DecisionTable], list[int]]:
        """The distinct tables, and per class its table's index among them."""
        if self._table_index is None:
            index: dict[DecisionTable, int] = {}
            table_of = [index.setdefault(c.table, len(index)) for c in self.classes]
            self._table_index = list(index), table_of
        return self._table_index

    def _runtimes(self) -> list[tuple[tuple[int, ...], ...]]:
        """Per distinct table (_table_list), what its decisions do at run time: per subject
        class, its row's row_runtime."""
        if self._table_runtimes is None:
            self._table_runtimes = [tuple([self.row_runtime(r) for r in t.rows])
                                    for t in self._table_list()[0]]
        return self._table_runtimes

    def runtime_numbers(self) -> list[int]:
        """Per class, what its table's decisions do at run time, as a number (equal
        runtimes, equal numbers)."""
        ids: dict[tuple, int] = {}
        per_table = [ids.setdefault(t, len(ids)) for t in self._runtimes()]
        return [per_table[t] for t in self._table_list()[1]]

    def _numbers(self, slots: list[int]) -> list[int]:
        """Per class, the runtime of its decisions at `slots` for every subject class, as a
        number (equal runtimes, equal numbers): worked out per distinct table."""
        at_slots = operator.itemgetter(*[self.alike.group_of[s] for s in slots])
        ids: dict[tuple, int] = {}
        if len(self.tree.subjects) == 1:  # every table one row: its runtimes there are the key
            per_table = [ids.setdefault(at_slots(t[0]), len(ids)) for t in self._runtimes()]
        else:
            per_table = [ids.setdefault(tuple(map(at_slots, t)), len(ids))
                         for t in self._runtimes()]
        return [per_table[t] for t in self._table_list()[1]]

    def answers(self, kind: str, op: str) -> list[int]:
        """Per class, what the program of `kind`/`op` answers for a name that leads there,
        apart from what depends on the parent (see name_keys), as a number (equal answers,
        equal numbers: signatures compare and hash numbers, not nested tuples). It is the
        runtime of the op's decisions, and for lookup and create whether the daemon must
        name the child."""
        out = self._answers.get((kind, op))
        if out is None:
            out = self._numbers(_ATOM_SLOTS[op])
            if kind not in ("remove", "rename"):
                out = [n << 1 | named for n, named in zip(out, self.named)]
            self._answers[(kind, op)] = out
        return out

    def _trivial_flags(self, what: str, uniform: bool) -> list[bool]:
        """Per class: does it allow `what` (an atom, or with `uniform` every atom of an op
        alike) without audit, for every subject class? Worked out per distinct table: for
        an atom from the runtimes, which tell allow without audit apart."""
        tables, table_of = self._table_list()
        if uniform:
            group_first = self.alike.first
            slots = list(dict.fromkeys(group_first[self.alike.group_of[s]]
                                       for s in _ATOM_SLOTS[what]))
            per_table = [_trivial(_uniform_rows(t.rows, slots)) for t in tables]
        else:
            runtimes = self._runtimes()
            allows = [kind == "allow" and not audit
                      for kind, _, _, audit, *_ in self._runtime_ids]  # per runtime
            group = self.alike.group_of[SLOT[what]]
            per_table = [all([allows[r[group]] for r in rt]) for rt in runtimes]
        return [per_table[t] for t in table_of]

    def prepare(self, planned: list[Class]) -> None:
        """Number the questions the namespace hooks ask (rename and rename2 ask one, and so
        do ops decided alike everywhere: _same_answers), and answer each for every class
        in `planned` (those whose instances are planned) at once: namespace_keys."""
        alias = _same_answers(self._table_list()[0])
        numbers: dict[tuple[str, str], int] = {}
        for member, params, kind, op in NAMESPACE_HOOKS:
            question = (kind, alias.get(op, op))
            post = member if member in ("lookup", "mkdir") else ""
            self.steps.append(_NamespaceStep(member, f"{member}_prefilter", kind, op, params,
                                             numbers.setdefault(question, len(numbers)), {},
                                             post))
        self.questions = list(numbers)
        views = [self.name_view(c) for c in planned]
        columns = [self.namespace_keys(kind, op, planned, views) for kind, op in self.questions]
        self.keys = [None] * len(self.classes)
        self.post_keys = [None] * len(self.classes)
        for c, keys in zip(planned, zip(*columns)):
            self.keys[c.id] = keys
        lookup = self.questions.index(("lookup", "lookup"))
        for c, key in zip(planned, self.lookup_post_keys(planned, views, columns[lookup])):
            self.post_keys[c.id] = key

    def namespace_keys(self, kind: str, op: str, planned: list[Class], views: list["_NameView"]
                       ) -> list[Optional[int]]:
        """Per class of `planned`: None when it needs no program for the question `kind`/`op`;
        else what its program is shared by, as a number (equal numbers, one program).

        When a namespace program's answers do not depend on which class it serves, it is
        shared by what they are (a signature); else it is the class's own. A class with no
        literal or glob transitions sends every name to its default child, so even without
        sharing (SHARING off) its programs are fixed by that child's decisions."""
        needs = self.needs_hook(kind, op, planned, views)
        if kind in ("link", "cfr"):
            # the source object's decisions, for every subject class
            source = self._numbers([SLOT["link:src" if kind == "link" else "copy_file_range:src"]])
            return [source[c.id] if need else None for c, need in zip(planned, needs)]
        if self.share is None:
            return self._unshared_keys(kind, op, planned, needs)
        if kind == "rename":
            return self.rename_keys(planned, views, needs)
        return self.name_keys(kind, op, planned, views, needs)

    def _unshared_keys(self, kind: str, op: str, planned: list[Class], needs: list[bool]
                       ) -> list[Optional[int]]:
        """namespace_keys without sharing: a class with literals or globs has its own
        program (~its id); one without, one fixed by its default child's decisions (and for
        create by whether that child is at least as strict)."""
        if kind == "lookup":
            return [~c.id if need else None for c, need in zip(planned, needs)]
        decided = self.answers(kind, op)
        at_least = self.strict.at_least_as_strict
        ids: dict[tuple, int] = {}
        keys: list[Optional[int]] = []
        for c, need in zip(planned, needs):
            if not need:
                keys.append(None)
            elif c.literals or c.globs:
                keys.append(~c.id)
            else:
                k = c.default
                shared = (decided[k] >> 1, at_least(c.id, k)) if kind == "create" else \
                    (decided[k],)
                keys.append(ids.setdefault(shared, len(ids)))
        return keys

    def name_keys(self, kind: str, op: str, planned: list[Class], views: list["_NameView"],
                  needs: list[bool]) -> list[Optional[int]]:
        """Keys of lookup, create and remove programs by their answer for every name (_by_name):
        two classes answering every name alike share the program (which walks the transitions
        of the first class). Names that the class's transitions tell apart but that get the
        same answer are not told apart here.

        The answer for a name (the hook body in logic.h.j2: fpol_on_lookup, fpol_on_create,
        fpol_on_remove) depends only on the child class it leads to (answers), and on the
        parent through lookup's "child is this class" and create's "child at least as
        strict" (`view.stricter`, per child of `view.targets`)."""
        base = self.answers(kind, op)
        twice = [b << 1 for b in base]
        ids: dict[tuple, int] = {}
        number = ids.setdefault
        keys: list[Optional[int]] = [None] * len(planned)
        # (a loop per kind: this runs for every class and question)
        if kind == "lookup":
            for n, c, view, need in zip(range(len(planned)), planned, views, needs):
                if need:
                    cid = c.id
                    keys[n] = number(_by_name(view, [twice[t] | (t == cid) for t in view.targets]),
                                     len(ids))
        elif kind == "create":
            for n, view, need in zip(range(len(planned)), views, needs):
                if need:
                    keys[n] = number(_by_name(view, [twice[t] | ok for t, ok in
                                                     zip(view.targets, view.stricter)]), len(ids))
        else:
            for n, view, need in zip(range(len(planned)), views, needs):
                if need:
                    keys[n] = number(_by_name(view, list(map(base.__getitem__, view.targets))),
                                     len(ids))
        return keys

    def lookup_post_keys(self, planned: list[Class], views: list["_NameView"],
                         lookups: list[Optional[int]]) -> list[Optional[int]]:
        """lookup_postfilter attaches the child's instance, or nothing when the child is the
        directory's own class (it inherits): per name, the child's instance or -1. Classes
        that agree on every name share the program (None: no lookup prefilter, no program;
        without sharing, each class its own)."""
        share = self.share
        ids: dict[tuple, int] = {}
        keys: list[Optional[int]] = []
        for c, view, lookup in zip(planned, views, lookups):
            if lookup is None:
                keys.append(None)
            elif share is None:
                keys.append(~c.id)
            else:
                cid = c.id
                keys.append(ids.setdefault(
                    _by_name(view, [-1 if t == cid else share[t] for t in view.targets]),
                    len(ids)))
        return keys

    def rename_keys(self, planned: list[Class], views: list["_NameView"], needs: list[bool]
                    ) -> list[Optional[int]]:
        """rename's answer for two names depends on their child classes' rename decisions and
        on whether the two are one class (logic.h.j2 fpol_rename): the class's transitions
        with each child replaced by its decisions and by the first entry leading to the same
        child. Classes with equal signatures answer every pair of names alike.

        The signature is the view's: its globs, names and masks, its targets' decisions, and
        which targets are one class (None when none are: the common case, quicker)."""
        decisions = self.answers("rename", "rename")  # both atoms', as a number
        ids: dict[tuple, int] = {}
        keys: list[Optional[int]] = []
        for view, need in zip(views, needs):
            if not need:
                keys.append(None)
                continue
            targets = view.targets
            if len(set(targets)) == len(targets):
                same = None
            else:
                first: dict[int, int] = {}
                same = tuple([first.setdefault(t, i) for i, t in enumerate(targets)])
            keys.append(ids.setdefault((view.globs, view.names, view.masks,
                                        tuple(map(decisions.__getitem__, targets)), same),
                                       len(ids)))
        return keys

    def name_view(self, c: Class) -> "_NameView":
        """Class `c`'s transitions as the namespace questions read them (once per class,
        for all of them)."""
        ok, nlits = self.inherit[c.id], len(c.literals)
        mask_keys, mask_targets = zip(*c.masks) if c.masks else ((), ())
        names, lit_targets = zip(*c.literals) if nlits else ((), ())
        # Classes share their globs' tuple (a few dozen at 10,000 rules): its texts, and
        # the set of them each literal matches, once per tuple.
        texts, matched = self._globs.get(id(c.globs)) or self._glob_entry(c.globs)
        if c.masks and nlits:
            at = {m: i for i, m in enumerate(mask_keys, 1)}
            # the set of its globs a literal matches (a bitmask) picks its mask entry
            fallback = []
            for lit in names:
                bits = matched.get(lit)
                if bits is None:
                    bits = matched[lit] = glob_mask(c.globs, lit)
                fallback.append(at.get(bits, 0))
        else:
            fallback = [0] * nlits
        kids = self.strict.targets(c)
        return _NameView([c.default, *mask_targets, *lit_targets], fallback,
                         [ok[-1], *ok[nlits:-1], *ok[:nlits]], mask_keys, names, texts, kids,
                         any(map(self.named.__getitem__, kids)), all(ok))

    def _glob_entry(self, globs: tuple) -> tuple[tuple[bytes, ...], dict[bytes, int]]:
        """name_view's entry for a tuple of globs: their texts, and (filled as literals are
        met) the set of them each literal matches."""
        entry: tuple[tuple[bytes, ...], dict[bytes, int]] = (tuple([g.text for g in globs]), {})
        self._globs[id(globs)] = entry
        self._kept.append(globs)  # (its id keys the entry)
        return entry

    def needs_hook(self, kind: str, op: str, planned: list[Class], views: list["_NameView"]
                   ) -> list[bool]:
        """Per class of `planned`: does it need a program in the namespace hook of `op`?
        (What its children are read from its view: kids, named_kid, kids_ok.)"""
        if kind in ("cfr", "link", "rename"):
            if len(self.classes) > 1:
                return [True] * len(planned)
            return [not _trivial(_uniform(c, op)) for c in planned]
        if kind == "lookup":
            trivial = self._trivial_flags("lookup", False)
            # the daemon must look up (or make) children it names: route them there
            return [v.named_kid or v.kids != (c.id,) or not all(map(trivial.__getitem__, v.kids))
                    for c, v in zip(planned, views)]
        if kind == "remove":
            trivial = self._trivial_flags(op, False)
            return [not all(map(trivial.__getitem__, v.kids)) for v in views]
        if kind == "create":
            trivial = self._trivial_flags(op, True)
            return [v.named_kid or not v.kids_ok or not all(map(trivial.__getitem__, v.kids))
                    for v in views]
        return [True] * len(planned)

    def program(self, key: tuple, make) -> Program:
        p = self.programs.get(key)
        if p is None:
            p = self.programs[key] = make()
            self.fresh.append(p)
        return p

    def _object_members(self, c: Class, index: int, rows: tuple) -> "_ObjectMembers":
        """The object-op programs of the table of `index` (_table_list), whose rows are
        `rows`: made (named after class `c`) or found. They depend only on the decisions at
        the object ops' slots: the hooks reading the same slots are worked out once per
        distinct decisions there (by identity: objects alike slots share stand for them),
        into their programs and default_filter entries (_object_entries)."""
        programs: list[tuple[int, Program]] = []
        defaults: list[tuple[int, tuple, tuple]] = []
        for slots, by_own, known in self._object_ops:
            key = tuple([id(r[i]) for r in rows for i in slots])
            found = known.get(key)
            if found is None:
                found = known[key] = self._object_entries(c, index, rows, by_own)
            programs += found[0]
            defaults += found[1]
        runs: list[Optional[list[Program]]] = [None] * len(OBJECT_RUNS)
        programs.sort(key=_HOOK_ORDER)
        for i, p in programs:
            run = runs[_RUN_OF[i]]
            if run is None:
                run = runs[_RUN_OF[i]] = []
            run.append(p)
        if defaults:  # the first member
            defaults.sort(key=_HOOK_ORDER)
            default = self.program(("default_filter", tuple([k for _, _, k in defaults])),
                                   lambda: Program(f"fpol_default_{c.id}", "default_filter",
                                                   "default", c.id, [], "", "",
                                                   switch=sorted([e for _, e, _ in defaults])))
            runs[0] = [default, *(runs[0] or ())]
        return _ObjectMembers(runs)

    def _object_entries(self, c: Class, index: int, rows: tuple,
                        by_own: list[tuple[list[int], list[tuple[int, str]]]]
                        ) -> tuple[list[tuple[int, Program]], list[tuple[int, tuple, tuple]]]:
        """_object_members' part for the hooks of one set of slots (`by_own`: by the slots
        of their op): (hook index, program) per program, made (named after class `c`) or
        found, and (hook index, switch entry, key) per default_filter entry."""
        programs: list[tuple[int, Program]] = []
        defaults: list[tuple[int, tuple, tuple]] = []
        fsync_made = False
        for own, hooks in by_own:
            uniform = _uniform_rows(rows, own)
            if _trivial(uniform):
                continue  # no program
            for i, op in hooks:
                step = self._object_step(op, uniform, index)
                if step[0] == "default":
                    defaults.append((i, step[1], step[2]))
                elif step[0] == "fsync":
                    # Quirk (spec §10): dir_fsync dispatch calls the fsync slot, so both
                    # members are set and both programs decide by opcode. Each member has a
                    # program of its own: libbpf and the kernel refuse one program in two
                    # members (its expected attach type is its member's index). Both ops'
                    # steps are alike (they read both ops' slots), and both hooks are in
                    # one set and one run.
                    if fsync_made:
                        continue  # by the other op's step
                    fsync_made = True
                    for hook in ("fsync", "dir_fsync"):
                        slot = f"{hook}_prefilter"
                        p = self.program(("fsync", hook, step[1]), lambda: Program(
                            f"fpol_{hook}_{c.id}", slot, "fsync", c.id, [], "fsync",
                            HOOK_PARAMS["fsync"]))
                        programs.append((HOOK_INDEX[hook], p))
                else:
                    member, params, kind, _ = HOOKS[i]
                    p = self.program((member, step[1]), lambda: Program(
                        f"fpol_{member}_{c.id}", f"{member}_prefilter", kind, c.id, [], op,
                        params))
                    programs.append((i, p))
        return programs, defaults

    def _object_step(self, op: str, uniform: Optional[Decision], index: int) -> tuple:
        """What one object op needs, not nothing, for the table of `index` (`uniform`: the
        decision at the op's slots if all are equal): ("default", switch entry, key) when
        default_filter decides it; else ("object", signature) or ("fsync", signature)."""
        if self.abi == "v4" and uniform is not None and \
                op not in ("fsync", "fsyncdir", "access"):  # access needs its mask
            # A decision that does not depend on the request's details: default_filter.
            # (Hooks reading the same slots have the same decision there: its word and
            # runtime are worked out once.)
            word_runtime = self._words.get(id(uniform))
            if word_runtime is None:
                rule = uniform.rules[0] if uniform.rules else None
                word_runtime = self._words[id(uniform)] = \
                    (pack(uniform, rule), self.runtime(uniform))
            return ("default", (OPCODES[op], word_runtime[0], op, ops.ATOMS_OF_OP[op][0]),
                    (OPCODES[op], word_runtime[1]))
        # The runtime of each decision, read from the table's row_runtime: alike slots
        # hold the same object, whose runtime their group's entry is.
        runtimes, group_of = self._runtimes()[index], self._group_of
        if op in ("fsync", "fsyncdir"):
            fsync, fsyncdir = group_of[SLOT["fsync"]], group_of[SLOT["fsyncdir"]]
            return ("fsync", tuple([rt[fsync] for rt in runtimes])
                    + tuple([rt[fsyncdir] for rt in runtimes]))
        return ("object", tuple([rt[group_of[i]] for rt in runtimes for i in _ATOM_SLOTS[op]]))

    def object_members(self, c: Class) -> "_ObjectMembers":
        """Class `c`'s object-op programs. They depend only on its decisions at the object
        ops' slots, which many tables share: worked out once per distinct such projection
        (the first class to need a program names it, as ever)."""
        index = self._table_list()[1][c.id]
        found = self._members_of_table.get(index)
        if found is None:
            table = c.table
            projection = tuple(map(self._object_decisions, table.rows))
            found = self._members_of_projection.get(projection)
            if found is None:
                found = self._members_of_projection[projection] = \
                    self._object_members(c, index, table.rows)
            self._members_of_table[index] = found
        return found

    def instance(self, c: Class, info: ClassInfo) -> Instance:
        """Class `c`'s fuse_ops programs, in member order: its table's object-op programs
        (object_members), and between their runs the namespace hooks' (keys from prepare),
        with the quirks of spec §10 where they apply; named and exemplified by its `info`.
        The class is added to each program's classes (the classes sharing the instance are
        added from it)."""
        objects = self.object_members(c).runs
        cid = c.id
        keys, post_key, posts = self.keys[cid], self.post_keys[cid], self._posts
        used: list[Program] = []  # every program of the instance, once
        for run, (member, slot, kind, op, params, question, made, post) in \
                zip(objects, self.steps):
            if run:
                used += run
            key = keys[question]
            if key is None:
                continue
            p = made.get(key)
            if p is None:
                p = made[key] = Program(f"fpol_{member}_{cid}", slot, kind, cid, [], op, params)
                self.fresh.append(p)
            used.append(p)
            if post == "lookup":
                used.append(posts.get(post_key) or self._lookup_post(c, post_key))
            elif post:
                used.append(self._mkdir_post())
        if objects[-1]:
            used += objects[-1]
        for p in used:
            p.classes.append(cid)
        return Instance(cid, info.instance, used, info.example)

    def _lookup_post(self, c: Class, key: int) -> Program:
        """The lookup postfilter of `key` (lookup_post_keys), made for class `c`."""
        post = self._posts[key] = Program(
            f"fpol_lookup_post_{c.id}", "lookup_postfilter", "lookup_post", c.id, [], "lookup",
            "const struct fuse_buffer *name, struct fuse_entry_out *out, "
            "struct fuse_buffer *entries")
        self.fresh.append(post)
        return post

    def _mkdir_post(self) -> Program:
        """The one mkdir postfilter. Quirk (spec §10): the mkdir postfilter slot is called
        whenever the prefilter is set, so it must never be NULL. (Class 0's, whichever class
        needs it first: not among that class's fresh ones.)"""
        post = self.programs.get(_MKDIR_POST)
        if post is None:
            post = self.programs[_MKDIR_POST] = Program(
                "fpol_mkdir_post", "mkdir_postfilter", "noop", 0, [], "mkdir",
                "const struct fuse_mkdir_in *in, const struct fuse_buffer *name")
        return post


_MKDIR_POST = ("noop_mkdir",)  # the one mkdir postfilter's key


class _NameView(NamedTuple):
    """A class's transitions as the namespace questions read them (name_view)."""

    targets: list[int]  # the classes they lead to: the default's, each mask's, each literal's
    fallback: list[int]  # per literal, the index in targets of the entry a name would follow
    # without it: its glob mask's, or the default's (0)
    stricter: list[bool]  # per target, is the child at least as strict as the class (create)
    masks: tuple[int, ...]  # its masks, in order
    names: tuple[bytes, ...]  # its literals' names, in order
    globs: tuple[bytes, ...]  # its globs' texts
    kids: tuple[int, ...]  # every class a child can be in (moves.Strictness.targets)
    named_kid: bool  # the daemon must name one of them
    kids_ok: bool  # every one is at least as strict as the class


def _by_name(view: _NameView, outs: list[int]) -> tuple:
    """What a namespace program of a class answers per name, given per target of its `view`
    what it answers for a name leading there (`outs`): its default, and the globs, mask
    entries and literals that answer otherwise than the entry a name would follow without
    them."""
    default = outs[0]
    # (two cases made quicker: what the general one makes of them)
    if outs.count(default) == len(outs):
        return default, (), (), ()
    if not view.masks:  # every literal falls back to the default
        return default, (), (), tuple([(lit, o) for lit, o in zip(view.names, outs[1:])
                                       if o != default])
    nmasks = len(view.masks)
    masks = tuple([(m, o) for m, o in zip(view.masks, outs[1:1 + nmasks]) if o != default])
    lits = tuple([(lit, o) for lit, f, o in zip(view.names, view.fallback, outs[1 + nmasks:])
                  if o != outs[f]])
    return default, view.globs if masks else (), masks, lits


class _NamespaceStep(NamedTuple):
    """One namespace hook as the plan walks it: its member, which question it asks, its
    programs by key, and the postfilter that goes with it (a tuple: instance unpacks it for
    every class)."""

    member: str
    slot: str  # the fuse_ops member its program fills
    kind: str
    op: str
    params: str
    question: int  # index into _Planner.questions
    made: dict[int, Program]  # its programs, by key (namespace_keys)
    post: str  # "lookup" or "mkdir": the member whose postfilter follows it; or ""


def _same_answers(tables: Sequence[DecisionTable]) -> dict[str, str]:
    """Namespace ops of one kind (lookup, create, remove) whose atoms have equal decisions
    in every row of `tables` (the classes' tables, each once: _Planner._table_list): each
    mapped to the first such op of its hooks. Their programs need the same hooks and answer
    every name alike (only the op's atoms are read), so a class's answers for one are its
    answers for the other, and are worked out once."""
    rows = [r for t in tables for r in t.rows]
    first_of_kind: dict[str, list[str]] = {}
    alias: dict[str, str] = {}
    for _, _, kind, op in NAMESPACE_HOOKS:
        if kind not in ("lookup", "create", "remove"):
            continue
        seen = first_of_kind.setdefault(kind, [])
        if op in seen or op in alias:
            continue
        for other in seen:
            a, b = _ATOM_SLOTS[other], _ATOM_SLOTS[op]
            # (lists and tuples compare their items by identity first: quick for the
            # decisions, which are mostly shared objects)
            if len(a) == len(b) and list(map(operator.itemgetter(*a), rows)) == \
                    list(map(operator.itemgetter(*b), rows)):
                alias[op] = other
                break
        else:
            seen.append(op)
    return alias


@dataclass
class _ObjectMembers:
    """One object plan's programs: per run of OBJECT_RUNS, its programs in member order,
    the default_filter first in the first run; None for a run with none (most are)."""

    runs: list[Optional[list[Program]]]


HOOK_PARAMS = {h[0]: h[1] for h in HOOKS}
HOOK_INDEX = {h[0]: i for i, h in enumerate(HOOKS)}
# The namespace hooks in member order, and the runs of object hooks before each of them
# and after the last: an instance is its runs of object members with those between.
NAMESPACE_HOOKS = [h for h in HOOKS if h[2] != "object"]
OBJECT_RUNS: list[list[tuple[str, str, str, str]]] = [[]]
for _hook in HOOKS:
    if _hook[2] == "object":
        OBJECT_RUNS[-1].append(_hook)
    else:
        OBJECT_RUNS.append([])
# Per object hook (by index in HOOKS), its run; _object_members orders entries by hook.
_RUN_OF = {HOOK_INDEX[h[0]]: r for r, run in enumerate(OBJECT_RUNS) for h in run}
_HOOK_ORDER = operator.itemgetter(0)
# The object ops' slots: a row's decisions there are all that object programs depend on.
_OBJECT_SLOTS = {i for _, _, kind, op in HOOKS if kind == "object" for i in _ATOM_SLOTS[op]}


# Classes share instances, and namespace programs, where they behave alike (tests turn
# this off to compare).
SHARING = True


def _shared_instances(tree: ClassTree, infos: list[ClassInfo], inherit: list[tuple[bool, ...]],
                      runtime: list[int]) -> list[int]:
    """Per class, the class whose fuse_ops instance it uses: the smallest class of its block
    in the coarsest partition where classes of one block behave identically to every program
    (so the root, class 0, keeps its own name: root_bpf).

    A program of class `c` reads, of `c` and of the child classes a name leads to, only
    what the decision words do at run time (`runtime`, a number per class: the return code,
    and for audited decisions the event naming the rule; not which rule denied), the
    daemon-lookup flag, and per transition whether the child may inherit `c`'s instance;
    and it compares class ids: child == `c` (lookup: inherit or attach), two children
    equal (rename within one class). So two classes share an instance when they agree on
    all of that, their transitions have the same names, glob texts and masks, children in
    the same blocks, and the same pattern of equal children (and of children equal to the
    class itself).
    Then any program written for one decides for the other exactly as its own would, and
    a child's instance is the same whichever class of the block its parent is in: fuse-bpf
    attaching the instance of a block, or inheriting it, is attaching the class's own."""
    classes = tree.classes
    # The first partition: what a class's own programs read. Refining it by the children's
    # blocks (Moore) then gives the coarsest partition that is also stable under them.
    labels: dict[tuple, int] = {}
    block: list[int] = []
    children: list[tuple[int, ...]] = []
    for c, info in zip(classes, infos):
        cid = c.id
        names, by_name = zip(*c.literals) if c.literals else ((), ())
        masks, by_mask = zip(*c.masks) if c.masks else ((), ())
        targets = (*by_name, *by_mask, c.default)
        # which children are one class, and which are the class itself: None when none are
        # (the common case, quicker), else per child its first equal (-1: the class)
        if cid in targets or len(set(targets)) < len(targets):
            first: dict[int, int] = {cid: -1}
            same: Optional[tuple[int, ...]] = \
                tuple([first.setdefault(t, i) for i, t in enumerate(targets)])
        else:
            same = None
        shape = (tuple([g.text for g in c.globs]) if c.globs else (), names, masks, same,
                 inherit[cid])
        block.append(labels.setdefault((runtime[cid], info.daemon_lookup, shape), len(labels)))
        children.append(targets)
    # A class alone in its block stays alone: only the others are refined, their blocks
    # numbered after the labels.
    sizes = Counter(block)
    active = [i for i, b in enumerate(block) if sizes[b] > 1]
    count = len({block[i] for i in active})
    while True:
        sigs: dict[tuple, int] = {}
        new = [len(labels) + sigs.setdefault((block[i], *map(block.__getitem__, children[i])),
                                             len(sigs))
               for i in active]
        for i, b in zip(active, new):
            block[i] = b
        if len(sigs) == count:
            break
        count = len(sigs)
    rep: dict[int, int] = {}
    return [rep.setdefault(b, i) for i, b in enumerate(block)]


def _programs(tree: ClassTree, abi: str, infos: list[ClassInfo], strict: Strictness,
              inherit: list[tuple[bool, ...]]) -> Callable[[], tuple[list[Program], list[Instance]]]:
    """Which instance each class uses (its ClassInfo.instance, now), and how to plan the
    instances and programs (shared where they behave the same), later. Classes that behave
    alike share one instance (_shared_instances): each class still has its Instance
    entry, naming the shared instance and its members."""
    planner = _Planner(tree, abi, strict)
    planner.named = [i.daemon_lookup for i in infos]  # objects the daemon must name
    planner.inherit = inherit
    if SHARING:
        share = planner.share = _shared_instances(tree, infos, inherit, planner.runtime_numbers())
    else:  # one instance per class, and namespace programs per class (tests compare)
        share = list(range(len(tree.classes)))
    for info in infos:  # a block's first class keeps its own name: the instance's
        info.instance = infos[share[info.id]].instance
    return lambda: _plan(planner, tree, infos, share)


def _plan(planner: "_Planner", tree: ClassTree, infos: list[ClassInfo], share: list[int]
          ) -> tuple[list[Program], list[Instance]]:
    instances: list[Instance] = []
    # The programs by class, then hook: a class's programs are all made while its instance
    # is planned (but the mkdir postfilter, class 0's), so each class's are sorted alone.
    ordered: list[Program] = []
    root = 0  # class 0's programs: ordered[:root]
    by_hook = operator.attrgetter("hook")
    planner.prepare([c for c in tree.classes if share[c.id] == c.id])
    for c, info in zip(tree.classes, infos):
        cid = c.id
        rep = share[cid]
        if rep == cid:
            instances.append(planner.instance(c, info))
            planner.fresh.sort(key=by_hook)
            ordered += planner.fresh
            planner.fresh.clear()
            if cid == 0:
                root = len(ordered)
            continue
        inst = instances[rep]
        for p in inst.programs:
            p.classes.append(cid)
        instances.append(Instance(cid, inst.name, inst.programs, info.example))
    post = planner.programs.get(_MKDIR_POST)
    if post is not None:
        ordered[:root] = sorted([*ordered[:root], post], key=by_hook)
    if not ordered:
        # libbpf 1.1 loads kernel BTF only for objects with a program, and then crashes
        # resolving the struct_ops type of a map no program fills: give the root instance
        # one program that changes nothing (CONTINUE is what a NULL member does).
        noop = Program("fpol_getattr_noop", "getattr_prefilter", "noop", 0, [0], "getattr",
                       HOOK_PARAMS["getattr"])
        ordered.append(noop)
        instances[0].programs.append(noop)
    return ordered, instances
