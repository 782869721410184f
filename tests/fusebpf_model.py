"""A model of fuse-bpf's dispatch and attachment rules, written from
shared/spec/fuse-bpf-abi.md §6 (which program runs, what its return code does)
and §8 (which instance a child inode gets, inheritance, sticky programs, new
objects, link's nodeid 0).

It drives a compiled policy's real instance graph (lower.Model.instances and
.programs: which member of which instance points at which program, and whose
class tables each program reads) and asks the kernel only one thing: what one
program returns for one call (fpol_hook in the check object, which runs the same
decision functions as the fuse_ops programs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from fpol.compiler.analyse import CANONICAL_ERRNO

CONTINUE, USER, USER_PREFILTER, POSTFILTER, USER_POSTFILTER, CALL_DEFAULT = range(6)
ROOT_NODEID = 1
REALISED = 1 << 6

# language op -> (fuse_ops member, kind of call, FUSE opcode)
MEMBERS = {
    "getattr": ("getattr", "object", 3), "setattr": ("setattr", "object", 4),
    "readlink": ("get_link", "object", 5), "open": ("open", "object", 14),
    "read": ("read_iter", "object", 15), "write": ("write_iter", "object", 16),
    "statfs": ("statfs", "object", 17), "release": ("release", "object", 18),
    "fsync": ("fsync", "fsync", 20), "setxattr": ("setxattr", "object", 21),
    "getxattr": ("getxattr", "object", 22), "listxattr": ("listxattr", "object", 23),
    "removexattr": ("removexattr", "object", 24), "flush": ("flush", "object", 25),
    "opendir": ("opendir", "object", 27), "readdir": ("readdir", "object", 28),
    "releasedir": ("releasedir", "object", 29), "access": ("access", "object", 34),
    "fallocate": ("file_fallocate", "object", 43), "lseek": ("lseek", "object", 46),
    "copy_file_range": ("copy_file_range", "cfr", 47),
    "lookup": ("lookup", "lookup", 1), "symlink": ("symlink", "create", 6),
    "mknod": ("mknod", "create", 8), "mkdir": ("mkdir", "create", 9),
    "unlink": ("unlink", "remove", 10), "rmdir": ("rmdir", "remove", 11),
    "rename": ("rename", "rename", 12), "link": ("link", "link", 13),
    "create": ("create_open", "create", 35),
}
# fsyncdir is dispatched through dir_fsync_prefilter, which (quirk, spec §10) calls the
# fsync slot.
FSYNCDIR = ("dir_fsync", "fsync", 30)


@dataclass
class Inode:
    ino: int  # identity of the backing inode
    ops: Optional[str]  # instance name
    nodeid: int
    is_dir: bool
    daemon: bool = False  # a classic FUSE inode (no backing, no program): the daemon serves it


@dataclass
class Outcome:
    """What the kernel would do with one request."""

    kind: str  # allow | deny | userspace
    errno: Optional[str] = None
    mode: Optional[str] = None
    realised: bool = False  # refused by the realisation, not by a rule
    unresolved: Optional[str] = None  # a request the daemon got naming a node it cannot know
    stage: str = "op"  # "op", or "lookup" when the path walk itself failed
    inherited: bool = False  # the object was judged with an instance it inherited

    @staticmethod
    def from_code(code: int, word: int = 0, stage: str = "op") -> "Outcome":
        signed = code - (1 << 32) if code >= 1 << 31 else code
        realised = bool(word & REALISED)
        if signed < 0:
            return Outcome("deny", CANONICAL_ERRNO.get(-signed, str(-signed)),
                           realised=realised, stage=stage)
        if signed == USER:
            return Outcome("userspace", mode="instead", stage=stage)
        if signed == USER_PREFILTER:
            return Outcome("userspace", mode="before", stage=stage)
        if signed == USER_POSTFILTER:
            return Outcome("userspace", mode="after", stage=stage)
        return Outcome("allow", stage=stage)

    @staticmethod
    def from_word(word: int, stage: str = "op") -> "Outcome":
        """What the daemon does with a request it performs: the policy's decision word."""
        kind = word & 3
        if kind == 1:
            err = (word >> 8) & 0xFF
            return Outcome("deny", CANONICAL_ERRNO.get(err, str(err)),
                           realised=bool(word & REALISED), stage=stage)
        if kind == 2:
            mode = {1: "before", 2: "after"}.get((word >> 2) & 3, "instead")
            return Outcome("userspace", mode=mode, stage=stage)
        return Outcome("allow", stage=stage)


@dataclass
class Backing:
    """The lower filesystem: path -> inode number; directories by path."""

    entries: dict = field(default_factory=dict)
    dirs: set = field(default_factory=set)
    next_ino: int = 2

    def add(self, path: tuple, is_dir: bool) -> None:
        for i in range(1, len(path)):
            if path[:i] not in self.entries:
                self.entries[path[:i]] = self._ino()
                self.dirs.add(path[:i])
        if path and path not in self.entries:
            self.entries[path] = self._ino()
            if is_dir:
                self.dirs.add(path)

    def _ino(self) -> int:
        self.next_ino += 1
        return self.next_ino


class FuseBpfModel:
    def __init__(self, model, engine, backing: Backing, classify):
        self.abi = model.abi
        self.engine = engine
        self.instances = {i.name: i for i in model.instances}
        self.members = {i.name: dict(i.members) for i in model.instances}
        self.programs = {p.name: p for p in model.programs}
        self.instance_of_class = {i.cls: i.name for i in model.instances}
        self.backing = backing
        self.classify = classify  # what fpol's daemon attaches when a lookup goes to it
        self.dcache: dict[tuple, Inode] = {(): Inode(1, model.instances[0].name, ROOT_NODEID, True)}
        self.icache: dict[int, Inode] = {}
        # The daemon's node table: the nodeids it handed out (the root's is the kernel's).
        # Inodes the kernel looked up itself carry nodeid 0 (spec §8).
        self.daemon_nodes: dict[int, tuple] = {ROOT_NODEID: ()}
        self.next_nodeid = ROOT_NODEID + 1
        self.sent: list[tuple[str, int, Optional[tuple]]] = []  # (op, nodeid, path) to the daemon
        self.filters: list[tuple[str, int, Optional[tuple]]] = []  # filter requests, likewise
        self.who = {"uid": 0, "gid": 0}  # the requester of the request being modelled

    def _to_daemon(self, op: str, nodeid: int, path: Optional[tuple]) -> Optional[str]:
        """An ordinary request (not a filter one) reaches the daemon naming `nodeid`: the
        reason it cannot resolve it, or None."""
        self.sent.append((op, nodeid, path))
        if nodeid == 0:
            return f"{op} names nodeid 0 (an inode the kernel looked up itself)"
        if nodeid not in self.daemon_nodes:
            return f"{op} names nodeid {nodeid}, which the daemon never handed out"
        return None

    # --- one program call (spec §6 steps 1-3) --------------------------------------------

    def _call(self, node: Inode, node_path: tuple, op: str, **kw) -> tuple[int, int, int]:
        """The kernel's dispatch of `op` on `node` (the object, or the directory for ops on
        a name in it): its program's answer, or, for a classic FUSE inode the daemon made,
        USER with the decision the daemon applies (the word of the class it gave it)."""
        if not node.daemon:
            return self._prefilter(node.ops, op, **kw)
        member, kind, opcode = FSYNCDIR if op == "fsyncdir" else MEMBERS[op]
        cls = self.classify(node_path)
        if kind == "fsync":
            _, word, child = self.engine.hook("fsync", cls, op="fsync", opcode=opcode,
                                              **kw, **self.who)
        else:
            _, word, child = self.engine.hook(kind, cls, op=op, **kw, **self.who)
        return USER, word, child

    def _prefilter(self, ops: Optional[str], op: str, **kw) -> tuple[int, int, int]:
        member, kind, opcode = FSYNCDIR if op == "fsyncdir" else MEMBERS[op]
        if ops is None:
            return CONTINUE, 0, 0
        members = self.members[ops]
        prog = members.get(member + "_prefilter")
        if op == "fsyncdir" and prog is not None:
            # Quirk (spec §10): a non-NULL dir_fsync_prefilter makes the kernel call the
            # fsync_prefilter member's program.
            prog = members.get("fsync_prefilter")
        if prog is None:
            # v4: a NULL member means CALL_DEFAULT, answered by default_filter if set.
            default = members.get("default_filter") if self.abi == "v4" else None
            if default is None:
                return CONTINUE, 0, 0
            p = self.programs[default]
            for code_op, _word, sw_op, _slot in p.switch:
                if code_op == opcode:
                    return self.engine.hook("object", p.cls, op=sw_op, **kw, **self.who)
            return CONTINUE, 0, 0
        p = self.programs[prog]
        if p.kind == "noop":
            return CONTINUE, 0, 0
        if kind == "fsync":
            return self.engine.hook("fsync", p.cls, op="fsync", opcode=opcode, **kw, **self.who)
        if kind == "rename" and member == "rename2":
            kind = "rename2"
        return self.engine.hook(kind, p.cls, op=op if op != "fsyncdir" else "fsync", **kw,
                                **self.who)

    # --- path walk and lookup (spec §8) ---------------------------------------------------

    def walk(self, path: tuple) -> tuple[Optional[Inode], Optional[Outcome]]:
        node = self.dcache[()]
        for i in range(len(path)):
            here = path[:i + 1]
            cached = self.dcache.get(here)
            if cached is not None:
                node = cached
                continue
            node, failure = self.lookup(path[:i], node, path[i])
            if failure is not None:
                return None, failure
        return node, None

    def lookup(self, dir_path: tuple, parent: Inode, name: bytes):
        code, word, _ = self._call(parent, dir_path, "lookup", names=(name,), nodeid=parent.nodeid)
        pre = Outcome.from_code(code, word, stage="lookup")
        if pre.kind == "deny":
            return None, pre
        path = dir_path + (name,)
        nodeid = 0
        if code == USER:
            # An ordinary LOOKUP to the daemon, naming the parent by its nodeid.
            why = self._to_daemon("lookup", parent.nodeid, dir_path)
            if why is not None:
                return None, Outcome("deny", "ESTALE", stage="lookup", unresolved=why)
            # The daemon judges it by the policy (the word is the child's lookup decision).
            pre = Outcome.from_word(word, stage="lookup")
            if pre.kind == "deny":
                return None, pre
        if path not in self.backing.entries:
            return None, Outcome("deny", "ENOENT", stage="lookup")
        if code in (USER, USER_POSTFILTER):
            # The daemon answers (or vets) the lookup and names the child's instance itself;
            # on this path nothing is inherited.
            ops = self.instance_of_class[self.classify(path)]
            if code == USER:
                nodeid = self.next_nodeid
                self.next_nodeid += 1
        elif code == POSTFILTER:
            post = self.members[parent.ops].get("lookup_postfilter")
            ops = parent.ops
            if post is not None:
                p = self.programs[post]
                _, _, child = self.engine.hook("lookup_post", p.cls, names=(name,))
                if child != p.cls:
                    ops = self.instance_of_class[child]
        else:
            ops = parent.ops  # no entry: inherited from the directory
        ino = self.backing.entries[path]
        existing = self.icache.get(ino)
        if existing is not None and existing.ops != ops:
            return None, Outcome("deny", "EINVAL", stage="lookup")  # cannot change a program
        node = existing or Inode(ino, ops, nodeid, path in self.backing.dirs)
        if nodeid and not node.nodeid:
            node.nodeid = nodeid
        if node.nodeid and node.nodeid != ROOT_NODEID:
            self.daemon_nodes[node.nodeid] = path
        self.icache[ino] = node
        self.dcache[path] = node
        self.last_lookup = pre
        return node, None

    def evict(self, path: tuple) -> None:
        """Drop cached dentries at and below `path` (and inodes no dentry holds)."""
        for p in [p for p in self.dcache if p[:len(path)] == path and p]:
            del self.dcache[p]
        held = {id(n) for n in self.dcache.values()}
        self.icache = {k: v for k, v in self.icache.items() if id(v) in held}

    # --- requests --------------------------------------------------------------------------

    def request(self, op: str, path: tuple, to: Optional[tuple] = None, flags: int = 0,
                mask: int = 0, uid: int = 0, gid: int = 0) -> Outcome:
        """One request by `uid`, `gid` (what the programs read from the task's credentials;
        the check object's hook emulation takes them as arguments)."""
        self.who = {"uid": uid, "gid": gid}
        if op in ("create", "mknod", "mkdir", "symlink", "unlink", "rmdir", "lookup"):
            parent, failure = self.walk(path[:-1])
            if failure:
                return failure
            if op == "lookup":
                self.evict(path)
                node, failure = self.lookup(path[:-1], parent, path[-1])
                if failure:
                    return failure
                out = self.last_lookup  # the prefilter's routing: CONTINUE/POSTFILTER or userspace
                return out if out.kind == "userspace" else Outcome("allow")
            code, word, _ = self._call(parent, path[:-1], op, names=(path[-1],), flags=flags,
                                       nodeid=parent.nodeid)
            out = Outcome.from_code(code, word)
            if code == USER:
                out = Outcome.from_word(word)
                out.unresolved = self._to_daemon(op, parent.nodeid, path[:-1])
            if out.kind == "allow":
                self._apply(op, path, parent, by_daemon=code == USER)
            return out
        if op == "rename":
            parent, failure = self.walk(path[:-1])
            if failure:
                return failure
            dparent, failure = self.walk(to[:-1])
            if failure:
                return failure
            _, failure = self.walk(path)
            if failure:
                return failure
            code, word, _ = self._call(parent, path[:-1], "rename", names=(path[-1], to[-1]),
                                       nodeid=parent.nodeid, newdir=dparent.nodeid)
            out = Outcome.from_code(code, word)
            if code == USER:
                out = Outcome.from_word(word)
                out.unresolved = (self._to_daemon("rename", parent.nodeid, path[:-1])
                                  or self._to_daemon("rename", dparent.nodeid, to[:-1]))
            if out.kind == "allow":
                self._move(path, to)
            return out
        node, failure = self.walk(path)
        if failure:
            return failure
        inherited = self.instance_of_class[self.classify(path)] != node.ops
        if op == "link":
            dparent, failure = self.walk(to[:-1])
            if failure:
                return failure
            code, word, _ = self._call(node, path, "link", names=(to[-1],), nodeid=0)
            out = Outcome.from_code(code, word) if code != USER else Outcome.from_word(word)
            if out.kind == "allow":
                self.backing.entries[to] = self.backing.entries[path]
                self.dcache[to] = node
        else:
            detail = mask | 16 if op == "access" else flags  # access(2) carries MAY_ACCESS
            code, word, _ = self._call(node, path, op, flags=detail, nodeid=node.nodeid)
            out = Outcome.from_code(code, word)
            if code == USER:
                out = Outcome.from_word(word)
                out.unresolved = self._to_daemon(op, node.nodeid, path)
            elif code in (USER_PREFILTER, USER_POSTFILTER):
                # A filter request: the daemon answers any nodeid, but names the object's
                # path in its events only for nodes it handed out.
                self.filters.append((op, node.nodeid, path))
        out.inherited = inherited
        return out

    def _apply(self, op: str, path: tuple, parent: Inode, by_daemon: bool = False) -> None:
        """A created object's inode gets the directory's instance (spec §8); one the daemon
        created is a classic FUSE inode with a nodeid the daemon handed out."""
        if op in ("unlink", "rmdir"):
            ino = self.backing.entries.pop(path, None)
            self.backing.dirs.discard(path)
            self.dcache.pop(path, None)
            if ino is not None and not any(v == ino for v in self.backing.entries.values()):
                self.icache.pop(ino, None)
            return
        self.backing.add(path, op == "mkdir")
        node = Inode(self.backing.entries[path], parent.ops, 0, op == "mkdir")
        if by_daemon:
            node = Inode(node.ino, None, self.next_nodeid, op == "mkdir", daemon=True)
            self.next_nodeid += 1
            self.daemon_nodes[node.nodeid] = path
        self.icache[node.ino] = node
        self.dcache[path] = node

    def _move(self, src: tuple, dst: tuple) -> None:
        """A renamed inode keeps its program while cached (spec §8)."""
        moved = {p: v for p, v in self.backing.entries.items() if p[:len(src)] == src}
        for p, ino in moved.items():
            del self.backing.entries[p]
            self.backing.entries[dst + p[len(src):]] = ino
            if p in self.backing.dirs:
                self.backing.dirs.discard(p)
                self.backing.dirs.add(dst + p[len(src):])
        cached = {p: v for p, v in self.dcache.items() if p[:len(src)] == src and p}
        for p, node in cached.items():
            del self.dcache[p]
            self.dcache[dst + p[len(src):]] = node
