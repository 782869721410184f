"""The FUSE server: read requests from /dev/fuse, dispatch one handler per opcode, reply.

Every handler decides its request with the policy first (enforce.py) and only then touches
the backing tree, always relative to a node's O_PATH descriptor (inodes.py). Allowed opens
of regular files are handed to the kernel with FOPEN_PASSTHROUGH, so their reads and writes
never reach the daemon; files whose read/write decisions need the daemon (audit, userspace,
complain mode) are served here with FOPEN_DIRECT_IO so that every read and write is seen.
The kernel may cache entries and attributes only where the policy proves it safe (the
PolicyView's cache rule per class: lookup or getattr a plain allow); everywhere else the
timeouts are 0 so the daemon sees every request. Whatever the mount itself changes that
could leave a cached answer deciding a later request -- a move into a class that may not be
cached, a reload -- is invalidated before the reply (FUSE_NOTIFY_INC_EPOCH and
INVAL_INODE take no lock the kernel could be holding for a request in flight).

Many users share the mount: the kernel checks the backing tree's ownership and modes first
(`default_permissions`), and every backing call that creates, changes, removes or opens an
object runs with the requester's filesystem credentials (creds.py), so new objects are the
requester's and the daemon's root rights are never lent to anyone.

Single-threaded on purpose: requests are short metadata operations (data moves in the
kernel), and one thread needs no locking around the inode and handle tables.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time
import traceback
from collections import Counter
from typing import TYPE_CHECKING, Callable, Optional, cast

from fpol.compiler import ops as langops
from fpol.compiler.policy import ALLOW, DENY

from .. import libc
from . import protocol as P
from .creds import Credentials
from fpol.compiler.view import Place, PolicyView
from .device import Channel, Request, Unmounted
from .enforce import Enforcer, Event, Refused
from .inodes import Handle, HandleTable, InodeTable, Node, proc_path

if TYPE_CHECKING:
    from .metrics import Metrics

NO_REPLY = object()
Op = P.Opcode
_OP_NAMES = {op.value: op.name.lower() for op in Op}

# Flags of FUSE_OPEN / FUSE_CREATE that are the kernel's business, not the backing open's.
_DROP_OPEN_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | langops.FMODE_EXEC

def _check_name(name: bytes) -> bytes:
    # The kernel never sends these, but "." or ".." in an *at() call would leave the node
    # (and at the root, the backing tree): refuse rather than trust.
    if name in (b"", b".", b"..") or b"/" in name:
        raise OSError(errno.EINVAL, "invalid name")
    return name


class FuseServer:
    def __init__(self, channel: Channel, root_fd: int, enforcer: Enforcer,
                 passthrough: bool = True, log: Optional[Callable[[str], None]] = None,
                 cache_seconds: float = 0.0, threads: int = 1):
        self._ch = channel
        self._local = threading.local()  # a worker thread's own channel (`ch`)
        self.threads = threads
        self.enf = enforcer
        self.creds = Credentials()
        self.cache_seconds = cache_seconds
        self.ttls = self._timeouts(enforcer.view)
        self.listings = self._listings(enforcer.view)
        self.epoch = False  # the kernel takes FUSE_NOTIFY_INC_EPOCH (set at INIT)
        # Held while a request is decided and performed: a reload swaps the policy
        # between two requests, never during one.
        self.lock = threading.Lock()
        self.metrics: Optional[Metrics] = None  # when `--metrics` asks for them
        self.inodes = InodeTable(root_fd, enforcer.root_place)
        self.handles = HandleTable()
        self.want_passthrough = passthrough
        self.passthrough = False
        self.log = log or (lambda msg: print(f"fpol mount: {msg}", file=sys.stderr, flush=True))
        self.stats: Counter = Counter()
        # nodeid -> open regular-file handles served by the daemon (FOPEN_DIRECT_IO)
        self.daemon_io: Counter = Counter()
        self.stopping = False
        self.handlers: dict[int, Callable[[Request], object]] = {
            Op.LOOKUP: self.lookup, Op.FORGET: self.forget, Op.BATCH_FORGET: self.batch_forget,
            Op.GETATTR: self.getattr, Op.SETATTR: self.setattr, Op.READLINK: self.readlink,
            Op.SYMLINK: self.symlink, Op.MKNOD: self.mknod, Op.MKDIR: self.mkdir,
            Op.UNLINK: self.unlink, Op.RMDIR: self.rmdir, Op.RENAME: self.rename,
            Op.RENAME2: self.rename2, Op.LINK: self.link, Op.OPEN: self.open,
            Op.READ: self.read, Op.WRITE: self.write, Op.STATFS: self.statfs,
            Op.RELEASE: self.release, Op.FSYNC: self.fsync, Op.SETXATTR: self.setxattr,
            Op.GETXATTR: self.getxattr, Op.LISTXATTR: self.listxattr,
            Op.REMOVEXATTR: self.removexattr, Op.FLUSH: self.flush, Op.OPENDIR: self.opendir,
            Op.READDIR: self.readdir, Op.READDIRPLUS: self.readdirplus,
            Op.RELEASEDIR: self.releasedir, Op.FSYNCDIR: self.fsyncdir, Op.ACCESS: self.access,
            Op.CREATE: self.create, Op.INTERRUPT: self.interrupt, Op.DESTROY: self.destroy,
            Op.FALLOCATE: self.fallocate, Op.LSEEK: self.lseek,
            Op.COPY_FILE_RANGE: self.copy_file_range,
            Op.COPY_FILE_RANGE_64: self.copy_file_range_64,
        }

    # --- session ---------------------------------------------------------------------------

    def handshake(self) -> P.Negotiated:
        """Answer FUSE_INIT (again if the kernel first offers a newer major)."""
        while True:
            req = self.ch.read()
            if req.opcode != Op.INIT:
                raise P.ProtocolError(f"expected INIT, got opcode {req.opcode}")
            neg = P.negotiate(P.parse_init(req.body), self.want_passthrough)
            self.ch.reply(req.unique, neg.reply)
            if not neg.retry:
                self.passthrough = neg.passthrough
                self.epoch = neg.minor >= P.INC_EPOCH_MINOR
                return neg

    @property
    def ch(self) -> Channel:
        """The channel of the thread serving: replies go back where requests came from."""
        return getattr(self._local, "ch", None) or self._ch

    def serve(self) -> None:
        """Serve until the filesystem is unmounted (ENODEV) or the kernel sends DESTROY.

        With `threads` > 1, more threads read requests from clones of the channel, so a
        request can be read while another is answered; each is still decided and
        performed under the lock (one policy per request; the tables are not shared
        between threads otherwise)."""
        workers = []
        try:
            for _ in range(self.threads - 1):
                ch = self._ch.clone()
                t = threading.Thread(target=self._serve_on, args=(ch,), daemon=True)
                t.start()
                workers.append((t, ch))
            self._serve_on(None)
        finally:
            for t, ch in workers:
                t.join(timeout=5)
                ch.close()
            self.handles.close_all()
            self.inodes.close_all()

    def _serve_on(self, channel: Optional[Channel]) -> None:
        if channel is not None:
            self._local.ch = channel
        ch = self.ch
        try:
            while not self.stopping:
                req = ch.read()
                with self.lock:
                    self.dispatch(req)
        except Unmounted:
            pass

    def dispatch(self, req: Request) -> None:
        if self.metrics is None:
            return self._dispatch(req)
        self.enf.last = None
        start = time.perf_counter()
        try:
            self._dispatch(req)
        finally:
            self._observe(req.opcode, time.perf_counter() - start)

    def _observe(self, opcode: int, seconds: float) -> None:
        m, op = self.metrics, _OP_NAMES.get(opcode, str(opcode))
        assert m is not None  # dispatch() observes only with metrics
        m.latency.labels(op).observe(seconds)
        if self.enf.last is None:
            m.requests.labels(op, "none").inc()
            return
        d, rule = self.enf.last
        m.requests.labels(op, d.kind).inc()
        if d.kind == DENY:
            m.denials.labels(self.enf.rule_label(rule)).inc()

    def _dispatch(self, req: Request) -> None:
        self.stats["requests"] += 1
        self.stats[req.opcode] += 1
        handler = self.handlers.get(req.opcode)
        try:
            if handler is None:
                raise OSError(errno.ENOSYS, "not implemented")
            out = handler(req)
        except Refused as e:
            err = e.errno
        except OSError as e:
            err = e.errno or errno.EIO
            if err == errno.ENOSYS and handler is not None:
                err = errno.EOPNOTSUPP  # ENOSYS would tell the kernel the op is unimplemented
        except Unmounted:
            raise
        except P.ProtocolError as e:  # a malformed request: the caller gets EIO, no traceback
            self.log(f"malformed request (opcode {req.opcode}): {e}")
            err = errno.EIO
        except Exception:
            self.log(f"internal error on opcode {req.opcode}:\n{traceback.format_exc()}")
            err = errno.EIO
        else:
            if out is not NO_REPLY:
                self.ch.reply(req.unique, cast(bytes, out))
            return
        if req.opcode in P.NO_REPLY_OPCODES:
            return
        self.ch.reply_error(req.unique, err if 0 < err <= P.MAX_ERRNO else errno.EIO)

    # --- what the kernel may cache --------------------------------------------------------

    def _timeouts(self, view: PolicyView) -> dict[Place, tuple[float, float]]:
        """(entry, attribute) timeout per place of the view, for this mount's cache time."""
        return {p: view.cache(p).timeouts(self.cache_seconds) for p in view.places}

    def _listings(self, view: PolicyView) -> dict[Place, bool]:
        """Per place: may the kernel keep a directory's listing (FOPEN_CACHE_DIR)?"""
        return {p: bool(self.cache_seconds) and view.cache(p).listing for p in view.places}

    def _entry_out(self, node: Node, st) -> bytes:
        entry, attr = self.ttls[node.place]
        if self.metrics is not None:
            self.metrics.entries.labels("yes" if entry else "no").inc()
        return P.entry_out(node.nodeid, st, entry_valid=entry, attr_valid=self._attr_ttl(attr, st))

    def _attr_out(self, node: Node, st) -> bytes:
        return P.attr_out(st, self._attr_ttl(self.ttls[node.place][1], st))

    @staticmethod
    def _attr_ttl(ttl: float, st) -> float:
        # A file with several names has a node (a kernel inode) per name, and a write or
        # chmod through one name would leave the others' cached attributes stale.
        return 0.0 if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) else ttl

    def _cached(self, nodes: list[Node]) -> list[tuple[Node, tuple[float, float]]]:
        """The timeouts the kernel holds for these nodes now (before their classes change)."""
        return [(n, self.ttls[n.place]) for n in nodes]

    def _invalidate_lost(self, before: list[tuple[Node, tuple[float, float]]]) -> None:
        """After nodes changed class: whatever the kernel may still hold for them that their
        new class does not allow it to cache is dropped, before the request is answered."""
        entries = []
        for node, (entry, attr) in before:
            new_entry, new_attr = self.ttls[node.place]
            if attr > new_attr:
                self.ch.notify(P.inval_attributes(node.nodeid))
                self._count_invalidation("attributes")
            if entry > new_entry:
                entries.append(node)
        if entries:
            self._drop_entries(entries)

    def _drop_entries(self, nodes: list[Node]) -> None:
        if self.epoch:
            # One lock-free message: every dentry is looked up again on its next use.
            self.ch.notify(P.inc_epoch())
            self._count_invalidation("epoch")
            return
        self._count_invalidation("entries", len(nodes))
        # Older kernels: one INVAL_ENTRY per name. The kernel takes the parent's lock for
        # it, which a request waiting on this thread may hold: sent from another thread.
        messages = [P.inval_entry(n.parent.nodeid, cast(bytes, n.name)) for n in nodes
                    if n.parent is not None]
        threading.Thread(target=lambda: [self.ch.notify(m) for m in messages],
                         daemon=True).start()

    def swap(self, view: PolicyView) -> None:
        """Decide every later request with `view` (a reload): classify every known node
        again, and drop everything the kernel caches, at once. Call with self.lock held."""
        self.enf.swap(view)
        self.ttls = self._timeouts(view)
        self.listings = self._listings(view)
        nodes = self.inodes.reclassify_all(view)
        if self.cache_seconds:
            for node in nodes:
                self.ch.notify(P.inval_attributes(node.nodeid))
            self._count_invalidation("attributes", len(nodes))
            self._drop_entries([n for n in nodes if not n.is_root])

    def _count_invalidation(self, kind: str, n: int = 1) -> None:
        self.stats[f"invalidated {kind}"] += n
        if self.metrics is not None:
            self.metrics.invalidations.labels(kind).inc(n)

    # --- helpers -----------------------------------------------------------------------------

    def _event(self, req: Request, op: str, node: Node, name: Optional[bytes] = None,
               flags: int = 0, mask: int = 0) -> Callable[[], Event]:
        def make() -> Event:
            base = node.path()
            path = None if base is None else (base + (name,) if name is not None else base)
            return Event(op, path, None, flags, mask, req.pid, req.uid, req.gid)
        return make

    def _node_op(self, req: Request, op: str, perform: Callable, atom: Optional[str] = None,
                 node: Optional[Node] = None):
        """An op on the request's own node, decided by the node's class."""
        node = node or self.inodes.get(req.nodeid)
        d = self.enf.decision(node.place, atom or op, self._subject(req))
        return self.enf.run(d, self._event(req, op, node), lambda: perform(node))

    def _handle_op(self, req: Request, op: str, fh: int, perform: Callable,
                   atom: Optional[str] = None):
        h = self.handles.get(fh)
        d = self.enf.decision(h.node.place, atom or op, self._subject(req))
        return self.enf.run(d, self._event(req, op, h.node), lambda: perform(h))

    def _subject(self, req: Request) -> int:
        """Who is asking, as the policy tells requesters apart (LANGUAGE.md §6): the
        request header's uid and gid, which FUSE fills with the caller's fsuid and fsgid."""
        return self.enf.subject(req.uid, req.gid)

    def _entry(self, parent: Node, name: bytes, place: Place) -> bytes:
        """Look up a name just created and reply its entry (the kernel counts it as a lookup)."""
        node, st = self.inodes.lookup(parent, name, place)
        return self._entry_out(node, st)

    def _as(self, req: Request):
        """A context in which backing calls run with the requester's credentials."""
        return self.creds.acting_as(req.uid, req.gid, req.pid)

    def _new_object(self, req: Request, op: str, name: bytes, create: Callable[[Node], None]):
        parent = self.inodes.get(req.nodeid)
        _check_name(name)
        place = self.enf.child_place(parent.place, name)

        def perform():
            with self._as(req):  # the requester's object: its owner, its group, its rights
                create(parent)
            return self._entry(parent, name, place)
        return self.enf.run(self.enf.decision(place, op, self._subject(req)),
                            self._event(req, op, parent, name), perform)

    @staticmethod
    def _target(node: Node) -> tuple[str, bool]:
        """A path naming node's object for calls that take paths, and whether to follow it.

        A regular file or directory is named by its descriptor's magic link; a symlink by
        its parent's descriptor and its name, not followed."""
        if node.is_symlink:
            parent, name = node.entry()
            return os.fsdecode(os.fsencode(proc_path(parent.fd)) + b"/" + name), False
        return proc_path(node.fd), True

    # --- lookup and attributes ----------------------------------------------------------

    def lookup(self, req: Request):
        node, st, _, _, _ = self._lookup(req)
        return self._entry_out(node, st)

    def _lookup(self, req: Request):
        """Decide and perform a LOOKUP: (node, stat, parent, name, class of the child)."""
        parent = self.inodes.get(req.nodeid)
        name = _check_name(P.split_names(req.body, 1)[0])
        place = self.enf.child_place(parent.place, name)
        node, st = self.enf.run(self.enf.decision(place, "lookup", self._subject(req)),
                                self._event(req, "lookup", parent, name),
                                lambda: self.inodes.lookup(parent, name, place),
                                undo=lambda res: self.inodes.forget(res[0].nodeid, 1))
        return node, st, parent, name, place

    def forget(self, req: Request):
        self._forget(req.nodeid, P.FORGET_IN.unpack(req.body).nlookup)
        return NO_REPLY

    def batch_forget(self, req: Request):
        count = P.BATCH_FORGET_IN.unpack(req.body).count
        for i in range(count):
            one = P.FORGET_ONE.unpack(req.body, P.BATCH_FORGET_IN.size + i * P.FORGET_ONE.size)
            self._forget(one.nodeid, one.nlookup)
        return NO_REPLY

    def _forget(self, nodeid: int, count: int) -> None:
        node = self.inodes.forget(nodeid, count)
        if node is not None and node.backing_id:
            # The kernel holds no file of this inode any more (it forgot the inode), so
            # nothing can still resolve the id.
            try:
                self.ch.backing_close(node.backing_id)
            except OSError as e:
                self.log(f"backing close failed: {e.strerror}")
            node.backing_id = 0

    def getattr(self, req: Request):
        return self._node_op(req, "getattr", lambda node: self._attr_out(node, os.stat(node.fd)))

    def setattr(self, req: Request):
        a = P.SETATTR_IN.unpack(req.body)
        handle = self.handles.handles.get(a.fh) if a.valid & P.FATTR_FH else None
        return self._node_op(req, "setattr", lambda node: self._setattr(req, node, a, handle))

    def _setattr(self, req: Request, node: Node, a, handle: Optional[Handle]) -> bytes:
        v = a.valid
        if v & P.FATTR_KILL_SUIDGID and not v & P.FATTR_MODE:
            self._kill_privs(node)  # asked of the filesystem itself: the daemon's rights
        with self._as(req):
            self._change_attributes(node, a, handle)
        st = os.stat(node.fd)
        node.mode = st.st_mode  # the I/O mode of later opens depends on set-id bits
        return self._attr_out(node, st)

    # A SETATTR that changes nothing is chown(f, -1, -1): the kernel sends no flag for it
    # (ctime is the filesystem's business) and, under HANDLE_KILLPRIV_V2, leaves clearing
    # the set-id bits (or refusing to, for a caller who may not chmod) to the filesystem.
    _CHANGES = (P.FATTR_MODE | P.FATTR_UID | P.FATTR_GID | P.FATTR_SIZE | P.FATTR_ATIME
                | P.FATTR_MTIME | P.FATTR_ATIME_NOW | P.FATTR_MTIME_NOW | P.FATTR_CTIME)

    def _change_attributes(self, node: Node, a, handle: Optional[Handle]) -> None:
        v = a.valid
        target, follow = self._target(node)
        if not v & self._CHANGES:
            os.chown(target, -1, -1, follow_symlinks=follow)  # as the backing fs does it
            return
        if v & P.FATTR_MODE:
            if node.is_symlink:
                raise OSError(errno.EOPNOTSUPP, "symlinks have no mode")
            os.chmod(target, stat.S_IMODE(a.mode))
        if v & (P.FATTR_UID | P.FATTR_GID):
            os.chown(target, a.uid if v & P.FATTR_UID else -1,
                     a.gid if v & P.FATTR_GID else -1, follow_symlinks=follow)
        if v & P.FATTR_SIZE:
            if handle is not None and handle.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                os.ftruncate(handle.fd, a.size)
            else:
                os.truncate(target, a.size)
        if v & (P.FATTR_ATIME | P.FATTR_MTIME | P.FATTR_ATIME_NOW | P.FATTR_MTIME_NOW):
            # UTIME_NOW where the kernel says "now": a writer who is not the owner may set
            # the current time but no other; UTIME_OMIT keeps a time not asked for.
            libc.utimensat(libc.AT_FDCWD, os.fsencode(target),
                           a.atime * 10**9 + a.atimensec if v & P.FATTR_ATIME else None,
                           a.mtime * 10**9 + a.mtimensec if v & P.FATTR_MTIME else None,
                           now_atime=bool(v & P.FATTR_ATIME_NOW),
                           now_mtime=bool(v & P.FATTR_MTIME_NOW), follow=follow)

    @staticmethod
    def _kill_privs(node: Node) -> None:
        """What HANDLE_KILLPRIV_V2 asks of us on write/truncate/chown by an unprivileged
        caller: drop set-user-ID, set-group-ID (if group-executable) and file capabilities.
        The backing write runs as root (CAP_FSETID), so the backing fs would keep them."""
        if node.is_symlink:
            return
        target = proc_path(node.fd)
        mode = os.stat(node.fd).st_mode
        kept = mode & ~stat.S_ISUID
        if mode & stat.S_IXGRP:
            kept &= ~stat.S_ISGID
        if kept != mode:
            os.chmod(target, stat.S_IMODE(kept))
        try:
            os.removexattr(target, "security.capability")
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise

    def readlink(self, req: Request):
        # readlinkat(fd, "") reads the link an O_PATH|O_NOFOLLOW descriptor refers to.
        return self._node_op(req, "readlink", lambda node: os.readlink(b"", dir_fd=node.fd))

    def access(self, req: Request):
        mask = P.ACCESS_IN.unpack(req.body).mask

        def perform(node: Node):
            target, follow = self._target(node)
            if mask and not os.access(target, mask, follow_symlinks=follow):
                raise OSError(errno.EACCES, "access denied by the backing filesystem")
            return b""
        return self._node_op(req, "access", perform, atom=langops.access_atom(mask))

    def statfs(self, req: Request):
        def perform(node: Node):
            fd = node.fd if not node.is_symlink else self.inodes.root.fd
            return P.statfs_out(os.statvfs(proc_path(fd)))
        return self._node_op(req, "statfs", perform)

    # --- creating and removing names ----------------------------------------------------

    def mknod(self, req: Request):
        a = P.MKNOD_IN.unpack(req.body)
        name = P.split_names(req.body[P.MKNOD_IN.size:], 1)[0]
        return self._new_object(req, "mknod", name, lambda parent: os.mknod(
            name, a.mode, P.decode_dev(a.rdev), dir_fd=parent.fd))

    def mkdir(self, req: Request):
        a = P.MKDIR_IN.unpack(req.body)
        name = P.split_names(req.body[P.MKDIR_IN.size:], 1)[0]
        return self._new_object(req, "mkdir", name, lambda parent: os.mkdir(
            name, stat.S_IMODE(a.mode), dir_fd=parent.fd))

    def symlink(self, req: Request):
        name, target = P.split_names(req.body, 2)
        return self._new_object(req, "symlink", name, lambda parent: os.symlink(
            target, name, dir_fd=parent.fd))

    def _remove(self, req: Request, op: str, remove: Callable) -> bytes:
        parent = self.inodes.get(req.nodeid)
        name = _check_name(P.split_names(req.body, 1)[0])
        place = self.enf.child_place(parent.place, name)

        def perform():
            with self._as(req):
                remove(name, dir_fd=parent.fd)
            self.inodes.unlinked(parent, name)
            return b""
        return self.enf.run(self.enf.decision(place, op, self._subject(req)),
                            self._event(req, op, parent, name), perform)

    def unlink(self, req: Request):
        return self._remove(req, "unlink", os.unlink)

    def rmdir(self, req: Request):
        return self._remove(req, "rmdir", os.rmdir)

    def rename(self, req: Request):
        a = P.RENAME_IN.unpack(req.body)
        return self._rename(req, a.newdir, 0, req.body[P.RENAME_IN.size:])

    def rename2(self, req: Request):
        a = P.RENAME2_IN.unpack(req.body)
        return self._rename(req, a.newdir, a.flags, req.body[P.RENAME2_IN.size:])

    def _rename(self, req: Request, newdir: int, flags: int, names) -> bytes:
        parent = self.inodes.get(req.nodeid)
        newparent = self.inodes.get(newdir)
        name, newname = (_check_name(n) for n in P.split_names(names, 2))
        src, dst = self._child_path(parent, name), self._child_path(newparent, newname)
        src_place = self.enf.child_place(parent.place, name)
        dst_place = self.enf.child_place(newparent.place, newname)
        verdict = self.enf.two_path("rename", src, dst, src_place, dst_place, req.uid, req.gid)
        exchange = bool(flags & P.RENAME_EXCHANGE)
        if exchange:  # both objects move: judge both directions
            verdict = self.enf.stricter(verdict, self.enf.two_path(
                "rename", dst, src, dst_place, src_place, req.uid, req.gid))
        event = Event("rename", src, dst, flags, 0, req.pid, req.uid, req.gid)
        decision, carried = verdict.decision, False
        if flags & P.RENAME_WHITEOUT:
            # The whiteout left at the old name is a new character device there: a mknod.
            decision = self.enf.combine(decision, self.enf.decision(
                self.enf.child_place(parent.place, name), "mknod", self._subject(req)))
        if decision.kind != DENY:
            carried = self._carries_passthrough(parent.children.get(name), newparent, newname) \
                or (exchange and self._carries_passthrough(newparent.children.get(newname),
                                                           parent, name))
            if carried:
                decision = self.enf.carried(decision)

        # The kernel only replaces targets it has looked up (it has a node for them). A
        # target it was never shown -- hidden by a lookup denied with ENOENT, or made
        # behind our back -- is not silently replaced: RENAME_NOREPLACE, so EEXIST.
        # (RENAME_WHITEOUT combines with RENAME_NOREPLACE; RENAME_EXCHANGE needs a target.)
        unseen = not exchange and newname not in newparent.children

        def perform():
            with self._as(req):
                self._rename_backing(parent, name, newparent, newname, flags, unseen)
            moving = self._cached(self.inodes.subtree(parent.children.get(name))
                                  + (self.inodes.subtree(newparent.children.get(newname))
                                     if exchange else []))
            self.inodes.moved(parent, name, newparent, newname, exchange, self.enf.child_place)
            self._invalidate_lost(moving)
            return b""
        return self.enf.run(decision, event, perform,
                            rule=verdict.lost_rule if verdict.exdev else None,
                            exdev=verdict.exdev or carried)

    @staticmethod
    def _rename_backing(parent: Node, name: bytes, newparent: Node, newname: bytes,
                        flags: int, unseen: bool) -> None:
        try:
            if flags or unseen:
                libc.renameat2(parent.fd, name, newparent.fd, newname,
                               flags | (P.RENAME_NOREPLACE if unseen else 0))
            else:
                os.rename(name, newname, src_dir_fd=parent.fd, dst_dir_fd=newparent.fd)
        except OSError as e:
            if not (unseen and not flags and e.errno == errno.EINVAL):
                raise
            # a backing filesystem without RENAME_NOREPLACE: a plain rename
            os.rename(name, newname, src_dir_fd=parent.fd, dst_dir_fd=newparent.fd)

    def _carries_passthrough(self, node: Optional[Node], newparent: Node,
                             newname: bytes) -> bool:
        """Would moving node (and what is beneath it) to newparent/newname take an open
        passthrough handle into a class that does not plainly allow what the handle was
        opened for? The kernel serves such a handle's reads and writes itself, so the new
        class's decisions could never be applied to them. (Handles served by the daemon are
        judged again on every request and need no check.) Also refused: a class whose opens
        the daemon serves, which the kernel would fail while the handle is open."""
        if node is None:
            return False
        for h in self.handles.handles.values():
            if not h.passthrough:
                continue
            names: list = []
            n: Optional[Node] = h.node
            while n is not None and n is not node:
                names.append(n.name)
                n = n.parent
            if n is None:
                continue  # not beneath the moved node
            place = self.enf.child_place(newparent.place, newname)
            for below in reversed(names):
                place = self.enf.child_place(place, below)
            acc = h.flags & os.O_ACCMODE
            if acc in (os.O_RDONLY, os.O_RDWR) and not self.enf.plain_allow(place, "read"):
                return True
            if acc in (os.O_WRONLY, os.O_RDWR) and not self.enf.plain_allow(place, "write"):
                return True
            if not self.enf.view.passthrough(place):
                return True  # its later opens would be served by the daemon: EIO (above)
        return False

    @staticmethod
    def _child_path(parent: Node, name: bytes) -> tuple[bytes, ...]:
        base = parent.path()
        if base is None:
            raise OSError(errno.ENOENT, "directory no longer linked")
        return base + (name,)

    def link(self, req: Request):
        a = P.LINK_IN.unpack(req.body)
        node = self.inodes.get(a.oldnodeid)
        newparent = self.inodes.get(req.nodeid)
        newname = _check_name(P.split_names(req.body[P.LINK_IN.size:], 1)[0])
        src = node.path()
        if src is None:
            raise OSError(errno.ENOENT, "object no longer linked")
        dst = self._child_path(newparent, newname)
        verdict = self.enf.two_path("link", src, dst, node.place,
                                    self.enf.child_place(newparent.place, newname),
                                    req.uid, req.gid)
        event = Event("link", src, dst, 0, 0, req.pid, req.uid, req.gid)

        def perform():
            parent, name = node.entry()
            with self._as(req):
                os.link(name, newname, src_dir_fd=parent.fd, dst_dir_fd=newparent.fd,
                        follow_symlinks=False)
            if self.cache_seconds:  # its link count changed: the kernel holds the old one
                self.ch.notify(P.inval_attributes(node.nodeid))
            return self._entry(newparent, newname, self.enf.child_place(newparent.place, newname))
        return self.enf.run(verdict.decision, event, perform,
                            rule=verdict.lost_rule if verdict.exdev else None,
                            exdev=verdict.exdev)

    # --- files ----------------------------------------------------------------------------

    def open(self, req: Request):
        a = P.OPEN_IN.unpack(req.body)
        flags = a.flags

        def perform(node: Node):
            if not stat.S_ISREG(node.mode) and not stat.S_ISDIR(node.mode):
                # FIFOs and devices are opened by the kernel itself; a symlink never is.
                raise OSError(errno.ELOOP if node.is_symlink else errno.EINVAL, "not a file")
            with self._as(req):
                fd = os.open(proc_path(node.fd), (flags & ~_DROP_OPEN_FLAGS) | os.O_CLOEXEC)
            # The mode as it is now (a chmod through another name, or behind the mount,
            # may have added set-id bits): it decides whether writes may bypass the daemon.
            node.mode = os.fstat(fd).st_mode
            if a.open_flags & P.FUSE_OPEN_KILL_SUIDGID:  # O_TRUNC by an unprivileged caller
                try:
                    self._kill_privs(node)
                except BaseException:
                    os.close(fd)
                    raise
            return self._open_handle(node, fd, flags)
        node = self.inodes.get(req.nodeid)
        d = self.enf.decision(node.place, langops.open_atom("open", flags), self._subject(req))
        return self.enf.run(d, self._event(req, "open", node, flags=flags),
                            lambda: perform(node),
                            undo=lambda res: self._close_handle(self.handles.pop(res[0].fh)))[1]

    def create(self, req: Request):
        a = P.CREATE_IN.unpack(req.body)
        name = _check_name(P.split_names(req.body[P.CREATE_IN.size:], 1)[0])
        parent = self.inodes.get(req.nodeid)
        place = self.enf.child_place(parent.place, name)

        def perform():
            # The kernel sends CREATE only for a name its lookup found absent. O_EXCL: an
            # object there that it was never shown (a name hidden by a lookup denied with
            # ENOENT) is not opened, let alone truncated -- EEXIST. O_NOFOLLOW: a symlink
            # planted under the name must not redirect the create.
            with self._as(req):
                fd = os.open(name, (a.flags & ~(os.O_NOCTTY | langops.FMODE_EXEC)) | os.O_CREAT
                             | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, stat.S_IMODE(a.mode),
                             dir_fd=parent.fd)
            try:
                pfd = os.open(proc_path(fd), os.O_PATH | os.O_CLOEXEC)
                st = os.stat(pfd)
            except BaseException:
                os.close(fd)
                raise
            node = self.inodes.remember(parent, name, pfd, st, place)
            h, open_reply = self._open_handle(node, fd, a.flags)
            return h, self._entry_out(node, st) + open_reply

        def undo(res):
            h = res[0]
            self._close_handle(self.handles.pop(h.fh))
            self.inodes.forget(h.node.nodeid, 1)
        d = self.enf.decision(place, langops.open_atom("create", a.flags), self._subject(req))
        return self.enf.run(d, self._event(req, "create", parent, name, flags=a.flags),
                            perform, undo=undo)[1]

    def _open_handle(self, node: Node, fd: int, flags: int) -> tuple[Handle, bytes]:
        h = Handle(node, fd, flags)
        self.handles.add(h)
        open_flags, backing_id = self._io_mode(h)
        if not h.passthrough and stat.S_ISREG(node.mode):
            self.daemon_io[node.nodeid] += 1
        if self.enf.plain_allow(node.place, "flush"):
            # Nothing to decide or log at close: spare the round trip. Like the I/O mode,
            # this is the open's: a later move or reload does not change it.
            open_flags |= P.FOPEN_NOFLUSH
        return h, P.open_out(h.fh, open_flags, backing_id)

    def _io_mode(self, h: Handle) -> tuple[int, int]:
        """Passthrough when the class allows it and every read/write this open allows is a
        plain allow, else daemon I/O."""
        node = h.node
        acc = h.flags & os.O_ACCMODE
        writes = acc in (os.O_WRONLY, os.O_RDWR)
        needs_daemon = (
            not self.enf.view.passthrough(node.place)
            or (acc in (os.O_RDONLY, os.O_RDWR) and not self.enf.plain_allow(node.place, "read"))
            or (writes and not self.enf.plain_allow(node.place, "write"))
            # Under HANDLE_KILLPRIV_V2 the kernel leaves clearing set-id bits on write to
            # the daemon (FUSE_WRITE_KILL_SUIDGID), which a passthrough write never reaches.
            or (writes and node.mode & (stat.S_ISUID | stat.S_ISGID))
            # A daemon-served open of it may be mapped (the kernel then refuses passthrough);
            # after a rename its class may allow passthrough while such opens remain.
            or self.daemon_io[node.nodeid] > 0)
        if needs_daemon and node.backing_users and not node.mode & (stat.S_ISUID | stat.S_ISGID) \
                and self._only_logged(node.place, acc):
            # Open for passthrough already (a complain-mode move carried such an open here,
            # see _carries_passthrough): the kernel would fail a daemon-served open (EIO).
            # What this one needs the daemon for is only logging its reads and writes; its
            # open is logged, its I/O is not.
            needs_daemon = False
        if not self.passthrough or needs_daemon or not stat.S_ISREG(node.mode):
            self.stats["daemon_opens"] += 1
            return P.FOPEN_DIRECT_IO, 0
        if not node.backing_id:
            # One backing id per node, shared by all its opens and kept until the node is
            # forgotten: the kernel refuses (EBUSY) a second open of an inode whose
            # passthrough backing file differs.
            try:
                node.backing_id = self.ch.backing_open(h.fd)
            except OSError as e:
                self.stats["passthrough_failures"] += 1
                if self.stats["passthrough_failures"] == 1:
                    self.log(f"passthrough refused by the kernel ({e.strerror}); serving "
                             "this file's reads and writes in the daemon")
                return P.FOPEN_DIRECT_IO, 0
        node.backing_users += 1
        h.passthrough = True
        self.stats["passthrough_opens"] += 1
        return P.FOPEN_PASSTHROUGH, node.backing_id

    def _only_logged(self, place: Place, acc: int) -> bool:
        """Are the reads and writes an open in this access mode allows decided `allow`
        (audited, or a deny that complain mode logs), not sent to userspace?"""
        atoms = (["read"] if acc in (os.O_RDONLY, os.O_RDWR) else []) \
            + (["write"] if acc in (os.O_WRONLY, os.O_RDWR) else [])
        view = self.enf.view
        return all(view.decision(place, a, s).kind == ALLOW
                   for a in atoms for s in range(len(view.subjects)))

    def _close_handle(self, h: Handle) -> None:
        os.close(h.fd)
        node = h.node
        if not h.passthrough and stat.S_ISREG(node.mode):
            self.daemon_io[node.nodeid] -= 1
            if self.daemon_io[node.nodeid] <= 0:
                del self.daemon_io[node.nodeid]
        if h.passthrough:
            # The backing id stays registered until the node is forgotten: every later
            # passthrough open of it reuses it (the kernel opens a backing file of its own
            # per open, with that open's flags), so an open costs no BACKING_OPEN ioctl.
            node.backing_users -= 1

    def read(self, req: Request):
        a = P.READ_IN.unpack(req.body)
        self.stats["daemon_reads"] += 1
        return self._handle_op(req, "read", a.fh, lambda h: os.pread(h.fd, a.size, a.offset))

    def write(self, req: Request):
        a = P.WRITE_IN.unpack(req.body)
        data = req.body[P.WRITE_IN.size:P.WRITE_IN.size + a.size]
        self.stats["daemon_writes"] += 1

        def perform(h: Handle):
            if a.write_flags & P.FUSE_WRITE_KILL_SUIDGID:
                self._kill_privs(h.node)
            return P.write_out(os.pwrite(h.fd, data, a.offset))
        return self._handle_op(req, "write", a.fh, perform)

    def flush(self, req: Request):
        a = P.FLUSH_IN.unpack(req.body)
        # close() of a duplicate flushes what the backing filesystem flushes at close (NFS).
        # (mypy refuses `None or b""` on a function returning None.)
        return self._handle_op(req, "flush", a.fh,
                               lambda h: os.close(os.dup(h.fd)) or b"")  # type: ignore[func-returns-value]

    def fsync(self, req: Request):
        a = P.FSYNC_IN.unpack(req.body)
        sync = os.fdatasync if a.fsync_flags & P.FUSE_FSYNC_FDATASYNC else os.fsync
        return self._handle_op(req, "fsync", a.fh, lambda h: sync(h.fd) or b"")

    def release(self, req: Request):
        return self._release(req, "release")

    def _release(self, req: Request, op: str):
        a = P.RELEASE_IN.unpack(req.body)
        h = self.handles.pop(a.fh)
        try:
            # The kernel ignores a release's error; the decision is still made (and logged).
            d = self.enf.decision(h.node.place, op, self._subject(req))
            return self.enf.run(d, self._event(req, op, h.node), lambda: b"")
        finally:
            self._close_handle(h)

    def fallocate(self, req: Request):
        a = P.FALLOCATE_IN.unpack(req.body)

        def perform(h: Handle):
            if a.mode == 0:
                os.posix_fallocate(h.fd, a.offset, a.length)
            else:
                libc.fallocate(h.fd, a.mode, a.offset, a.length)
            return b""
        return self._handle_op(req, "fallocate", a.fh, perform)

    def lseek(self, req: Request):
        a = P.LSEEK_IN.unpack(req.body)
        return self._handle_op(req, "lseek", a.fh, lambda h: P.LSEEK_OUT.pack(
            offset=os.lseek(h.fd, a.offset, a.whence)))

    def copy_file_range(self, req: Request):
        return self._copy(req, lambda n: P.write_out(n))

    def copy_file_range_64(self, req: Request):
        return self._copy(req, lambda n: P.COPY_FILE_RANGE_OUT.pack(bytes_copied=n))

    def _copy(self, req: Request, out: Callable[[int], bytes]) -> bytes:
        a = P.COPY_FILE_RANGE_IN.unpack(req.body)
        hin, hout = self.handles.get(a.fh_in), self.handles.get(a.fh_out)
        subject = self._subject(req)
        d = self.enf.combine(self.enf.decision(hin.node.place, "copy_file_range:src", subject),
                             self.enf.decision(hout.node.place, "copy_file_range:dst", subject))
        src, dst = hin.node.path(), hout.node.path()
        event = Event("copy_file_range", src, dst, 0, 0, req.pid, req.uid, req.gid)

        def perform():
            if a.flags:
                raise OSError(errno.EINVAL, "copy_file_range flags")
            return out(os.copy_file_range(hin.fd, hout.fd, a.len, a.off_in, a.off_out))
        return self.enf.run(d, event, perform)

    # --- extended attributes ------------------------------------------------------------

    def setxattr(self, req: Request):
        a = P.SETXATTR_IN.unpack(req.body)
        rest = req.body[P.SETXATTR_IN.size:]
        name = P.split_names(rest, 1)[0]
        value = bytes(rest[len(name) + 1:len(name) + 1 + a.size])

        def perform(node: Node):
            target, follow = self._target(node)
            with self._as(req):
                os.setxattr(target, name, value, a.flags, follow_symlinks=follow)
            return b""
        return self._node_op(req, "setxattr", perform)

    def getxattr(self, req: Request):
        a = P.GETXATTR_IN.unpack(req.body)
        name = P.split_names(req.body[P.GETXATTR_IN.size:], 1)[0]

        def perform(node: Node):
            target, follow = self._target(node)
            with self._as(req):
                return self._sized(os.getxattr(target, name, follow_symlinks=follow), a.size)
        return self._node_op(req, "getxattr", perform)

    def listxattr(self, req: Request):
        a = P.GETXATTR_IN.unpack(req.body)

        def perform(node: Node):
            target, follow = self._target(node)
            with self._as(req):
                names = os.listxattr(target, follow_symlinks=follow)
            return self._sized(b"".join(os.fsencode(n) + b"\0" for n in names), a.size)
        return self._node_op(req, "listxattr", perform)

    @staticmethod
    def _sized(value: bytes, size: int) -> bytes:
        """size 0 asks how big the value is; a too-small buffer is ERANGE."""
        if size == 0:
            return P.GETXATTR_OUT.pack(size=len(value))
        if len(value) > size:
            raise OSError(errno.ERANGE, "xattr buffer too small")
        return value

    def removexattr(self, req: Request):
        name = P.split_names(req.body, 1)[0]

        def perform(node: Node):
            target, follow = self._target(node)
            with self._as(req):
                os.removexattr(target, name, follow_symlinks=follow)
            return b""
        return self._node_op(req, "removexattr", perform)

    # --- directories --------------------------------------------------------------------

    def opendir(self, req: Request):
        def perform(node: Node):
            with self._as(req):
                fd = os.open(proc_path(node.fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            h = Handle(node, fd, os.O_RDONLY)
            self.handles.add(h)
            return h
        node = self.inodes.get(req.nodeid)
        h = self.enf.run(self.enf.decision(node.place, "opendir", self._subject(req)),
                         self._event(req, "opendir", node), lambda: perform(node),
                         undo=lambda h: self._close_handle(self.handles.pop(h.fh)))
        # Where readdir needs no decision the kernel may keep the listing and answer later
        # READDIRs itself (it drops it when the directory changes through the mount). Only
        # opens made with this flag read a kept listing, and each OPENDIR is decided by the
        # class of the moment: after a move or a reload that stops allowing it, new opens
        # get no flag, and their READDIRs come to the daemon again.
        keep = P.FOPEN_CACHE_DIR | P.FOPEN_KEEP_CACHE if self.listings[node.place] else 0
        return P.open_out(h.fh, keep)

    def readdir(self, req: Request):
        return self._readdir(req, plus=False)

    def readdirplus(self, req: Request):
        return self._readdir(req, plus=True)

    def _readdir(self, req: Request, plus: bool) -> bytes:
        a = P.READ_IN.unpack(req.body)
        return self._handle_op(req, "readdir", a.fh,
                               lambda h: self._dirents(h, a.offset, a.size, plus))

    def _dirents(self, h: Handle, offset: int, size: int, plus: bool) -> bytes:
        if offset == 0 or h.entries is None:
            h.entries = self._list(h)  # a snapshot; offsets index into it
        out, used = [], 0
        for i in range(offset, len(h.entries)):
            name, ino, dtype = h.entries[i]
            need = P.dirent_size(name, plus)
            if used + need > size:
                break
            if plus:
                out.append(P.direntplus(self._plus_entry(h.node, name), ino, i + 1, name, dtype))
            else:
                out.append(P.dirent(ino, i + 1, name, dtype))
            used += need
        return b"".join(out)

    def _list(self, h: Handle) -> list[tuple[bytes, int, int]]:
        node = h.node
        up = node.parent.ino if node.parent is not None else node.ino
        entries = [(b".", node.ino, 4), (b"..", up, 4)]
        with os.scandir(h.fd) as it:
            for e in it:
                if e.is_symlink():
                    dt = 10
                elif e.is_dir(follow_symlinks=False):
                    dt = 4
                elif e.is_file(follow_symlinks=False):
                    dt = 8
                else:
                    dt = 0  # DT_UNKNOWN: fifos, devices, sockets; stat tells
                entries.append((os.fsencode(e.name), e.inode(), dt))
        return entries

    def _plus_entry(self, parent: Node, name: bytes) -> bytes:
        """The entry part of a direntplus record: a real lookup only where one is plainly
        allowed; nodeid 0 otherwise, which makes the kernel send a LOOKUP of its own (judged,
        audited, or handled like any other) if the name is used."""
        empty = bytes(P.ENTRY_OUT.size)
        if name in (b".", b".."):
            return empty  # the kernel does not count lookups of these
        place = self.enf.child_place(parent.place, name)
        if not self.enf.plain_allow(place, "lookup"):
            return empty
        try:
            node, st = self.inodes.lookup(parent, name, place)
        except OSError:
            return empty
        return self._entry_out(node, st)

    def releasedir(self, req: Request):
        return self._release(req, "releasedir")

    def fsyncdir(self, req: Request):
        a = P.FSYNC_IN.unpack(req.body)
        # (mypy refuses `None or b""` on a function returning None.)
        return self._handle_op(req, "fsyncdir", a.fh,
                               lambda h: os.fsync(h.fd) or b"")  # type: ignore[func-returns-value]

    # --- session ops ------------------------------------------------------------------------

    def interrupt(self, req: Request):
        # Requests are served one at a time and finish quickly; nothing to cancel.
        return NO_REPLY

    def destroy(self, req: Request):
        self.stopping = True
        return b""

    def summary(self) -> str:
        s = self.stats
        busiest = ", ".join(f"{Op(op).name.lower()} {n}" for op, n in s.most_common()
                            if isinstance(op, int))
        return (f"served {s['requests']} requests ({busiest}); opens: "
                f"{s['passthrough_opens']} passthrough, {s['daemon_opens']} daemon; "
                f"daemon reads {s['daemon_reads']}, writes {s['daemon_writes']}; "
                f"{self.creds.switches} backing calls as other users")
