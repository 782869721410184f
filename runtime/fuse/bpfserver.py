"""The daemon on a fuse-bpf kernel (spec §6, §8, §9).

There the policy's programs decide in the kernel, and the daemon sees only what they
send to userspace:

- filter requests (opcode | FUSE_PREFILTER / FUSE_POSTFILTER), for rules redirected to
  userspace `before` or `after`: the handler vets them, and the reply hands the
  arguments back (a prefilter its in-args, a postfilter its out-args) or refuses;
- ordinary requests, for ops a program returned BPF_FUSE_USER for (plain `redirect ...
  to userspace`): performed like the stock daemon performs them. A LOOKUP reply names
  the child's backing file and its class's fuse_ops instance, because on this path
  nothing is inherited (§8); entries go through FUSE_DEV_IOC_BPF_RESPONSE, never write().

Nothing here has met a fuse-bpf kernel (none is available): it follows the spec, and the
tests drive it with the request bytes the spec describes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

from fpol.compiler.decide import Decision
from fpol.compiler.ops import ATOMS_OF_OP
from fpol.compiler.view import Place

from . import fusebpf
from . import protocol as P
from .device import Request, Unmounted
from .enforce import Event, _refusal, errno_name, show_path, write_line
from .server import NO_REPLY, FuseServer

Op = P.Opcode

# In-args of filter requests: (fixed struct bytes, NUL-terminated names that follow).
IN_ARGS: dict[int, tuple[int, int]] = {
    Op.LOOKUP: (0, 1), Op.GETATTR: (16, 0), Op.SETATTR: (88, 0), Op.OPEN: (8, 0),
    Op.OPENDIR: (8, 0), Op.CREATE: (16, 1), Op.MKNOD: (16, 1), Op.MKDIR: (8, 1),
    Op.READ: (40, 0), Op.WRITE: (40, 0), Op.LSEEK: (24, 0), Op.COPY_FILE_RANGE: (56, 0),
    Op.GETXATTR: (8, 1), Op.LISTXATTR: (8, 0), Op.STATFS: (0, 0), Op.READDIR: (40, 0),
    Op.ACCESS: (8, 0), Op.LINK: (8, 1), Op.SETXATTR: (16, 2), Op.REMOVEXATTR: (0, 1),
    Op.FALLOCATE: (32, 0), Op.FLUSH: (24, 0), Op.RELEASE: (24, 0), Op.RELEASEDIR: (24, 0),
    Op.FSYNC: (16, 0), Op.FSYNCDIR: (16, 0),
}
# A prefilter's last in-arg, when it is an immutable name, is not part of the reply (§9).
IMMUTABLE_LAST_NAME = frozenset({Op.CREATE, Op.MKNOD, Op.MKDIR})

OP_NAMES: dict[int, str] = {
    Op.LOOKUP: "lookup", Op.GETATTR: "getattr", Op.SETATTR: "setattr", Op.OPEN: "open",
    Op.OPENDIR: "opendir", Op.CREATE: "create", Op.MKNOD: "mknod", Op.MKDIR: "mkdir",
    Op.READ: "read", Op.WRITE: "write", Op.LSEEK: "lseek",
    Op.COPY_FILE_RANGE: "copy_file_range", Op.GETXATTR: "getxattr",
    Op.LISTXATTR: "listxattr", Op.STATFS: "statfs", Op.READDIR: "readdir",
    Op.ACCESS: "access", Op.LINK: "link", Op.SETXATTR: "setxattr",
    Op.REMOVEXATTR: "removexattr", Op.FALLOCATE: "fallocate", Op.FLUSH: "flush",
    Op.RELEASE: "release", Op.RELEASEDIR: "releasedir", Op.FSYNC: "fsync",
    Op.FSYNCDIR: "fsyncdir",
}


@dataclass
class FilterEvent(Event):
    """An event of a filter request: where the daemon cannot know the path, why."""

    path_unknown: Optional[str] = None

    def as_dict(self) -> dict:
        out = super().as_dict()
        if self.path is None:
            out["path_unknown"] = self.path_unknown or "unknown to the daemon"
        return out


# Requests whose nodeid names no inode.
NODELESS = frozenset({Op.INIT, Op.DESTROY, Op.INTERRUPT, Op.BATCH_FORGET})
ACL_PREFIX = b"system.posix_acl_"


def split_in_args(opcode: int, args: bytes) -> tuple[int, list[bytes]]:
    """(length of the in-args, the names among them) for a filter request's payload."""
    fixed, names = IN_ARGS.get(opcode, (len(args), 0))
    if fixed > len(args):
        raise fusebpf.FuseBpfError(f"opcode {opcode}: {len(args)} bytes of in-args, its "
                                   f"structure needs {fixed}")
    pos, found = fixed, []
    for _ in range(names):
        end = args.find(b"\0", pos)
        if end < 0:
            raise fusebpf.FuseBpfError(f"opcode {opcode}: a name without its NUL")
        found.append(args[pos:end])
        pos = end + 1
    return pos, found


class FuseBpfServer(FuseServer):
    """Serves what a fuse-bpf kernel's programs send to userspace."""

    def __init__(self, channel, root_fd: int, enforcer, instance_of: Callable[[int], str],
                 send_bpf_response: Callable[[int, bytes], None] = fusebpf.send_bpf_response,
                 **kw):
        # Data never moves through this daemon on fuse-bpf: the kernel uses the backing
        # files itself, so FUSE passthrough is not asked for.
        super().__init__(channel, root_fd, enforcer, passthrough=False, **kw)
        self.instance_of = instance_of
        self.send_bpf_response = send_bpf_response

    def dispatch(self, req: Request) -> None:
        if fusebpf.is_filter(req.opcode):
            self.stats["requests"] += 1
            self.stats["filter"] += 1
            try:
                self._filter(req)
            except Unmounted:
                raise
            except Exception:  # a bug must refuse this request, not stop the serving thread
                self.log(f"internal error on a filter request:\n{traceback.format_exc()}")
                self.ch.send(fusebpf.filter_reply(req.unique, -errno.EIO))
            return
        if req.nodeid == 0 and req.opcode not in NODELESS:
            self.stats["requests"] += 1
            self.stats["nodeid 0"] += 1
            self._unnamed(req)
            return
        super().dispatch(req)

    # --- requests about inodes the kernel looked up itself (nodeid 0) ----------------------

    def _unnamed(self, req: Request) -> None:
        """A request naming nodeid 0: an inode the kernel looked up itself, which the
        daemon never saw, so it cannot tell which file is meant. The realisation sends
        nothing else here (objects and directories the daemon must serve are looked up by
        the daemon, spec §8), except what the RFC kernel sends past the programs: reads of
        POSIX ACLs, which `ls -l` makes. Those are answered "no ACL" (ENODATA): the file is
        unknown. Anything else is answered EIO with a line saying why -- never ESTALE,
        which would tell the caller its handle went stale."""
        if req.opcode == Op.FORGET:
            return  # nothing to forget: the daemon handed out no such node
        if req.opcode == Op.GETXATTR:
            try:
                name = P.split_names(req.body[P.GETXATTR_IN.size:], 1)[0]
            except Exception:
                name = b""
            if name.startswith(ACL_PREFIX):
                self.stats["acl reads, nodeid 0"] += 1
                self.ch.reply_error(req.unique, errno.ENODATA)
                return
        op = OP_NAMES.get(req.opcode, f"opcode {req.opcode}")
        self.log(f"{op} of nodeid 0 (an inode the kernel looked up itself, unknown to the "
                 f"daemon): answered EIO; the policy's objects send no such request")
        if req.opcode not in P.NO_REPLY_OPCODES:
            self.ch.reply_error(req.unique, errno.EIO)

    # --- ordinary lookups: entries name the backing file and the child's instance -----------

    def lookup(self, req: Request):
        node, st, parent, name, place = self._lookup(req)
        entry = P.entry_out(node.nodeid, st)
        fd = self._backing_fd(parent, name, st)
        if fd is None:
            return entry  # no backing (a symlink, a device): a classic FUSE node
        try:
            # Instances are named by class number: asked of the view, used at once.
            instance = self.instance_of(self.enf.view.number(place))
            reply = fusebpf.lookup_reply(req.unique, entry, [
                fusebpf.backing(fd), fusebpf.program(instance)])
            self.send_bpf_response(self.ch.fd, reply)
        finally:
            os.close(fd)  # the kernel took its own reference while handling the ioctl
        return NO_REPLY

    @staticmethod
    def _backing_fd(parent, name: bytes, st) -> Optional[int]:
        """A descriptor the kernel can take as the child's backing file (not O_PATH:
        fget() refuses those), or None for objects that cannot be opened so."""
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            return None
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        if stat.S_ISDIR(st.st_mode):
            flags |= os.O_DIRECTORY
        try:
            return os.open(name, flags, dir_fd=parent.fd)
        except OSError:
            return None

    # --- filter requests ------------------------------------------------------------------

    def _filter_subject(self, f, names) -> tuple[Optional[tuple], Optional[Place], Optional[str]]:
        """(path, place, why the path is unknown) of a filter request's object, from the
        daemon's node table: the node the request names, or for an op on a name in a
        directory (lookup, create, mknod, mkdir) that name in it."""
        if not f.nodeid:
            return None, None, ("nodeid 0: an inode the kernel looked up itself, which the "
                                "daemon never saw")
        node = self.inodes.nodes.get(f.nodeid)
        if node is None:
            return None, None, f"nodeid {f.nodeid} is not in the daemon's node table"
        path = node.path()
        if path is None:
            return None, node.place, "the object was unlinked while open"
        if names and f.opcode in (Op.LOOKUP, Op.CREATE, Op.MKNOD, Op.MKDIR):
            return path + (names[0],), self.enf.child_place(node.place, names[0]), None
        return path, node.place, None

    def _consult_filter(self, ev: "FilterEvent", mode: str, rule: Optional[dict],
                        result: Optional[int]) -> Optional[int]:
        """Ask the handler (Enforcer._consult, with the rule as found here)."""
        if self.enf.handler is None:
            return None
        info = ev.as_dict()
        info["mode"] = mode
        info["rule"] = rule
        if result is not None:
            info["result"] = 0 if result == 0 else -result
        try:
            return _refusal(self.enf.handler(info))
        except Exception as e:
            self.log(f"handler {self.enf.handler_name} failed on {ev.op} "
                     f"{show_path(ev.path)}: {type(e).__name__}: {e}; refusing with EIO")
            return errno.EIO

    def _audit_filter(self, ev: "FilterEvent", mode: str, rule: Optional[dict],
                      refused: Optional[int], result: int) -> None:
        """One audit line, as AuditLog.write makes them, saying why a path is missing."""
        rec = {"time": round(time.time(), 6), "op": ev.op, "path": show_path(ev.path),
               "to": None, "decision": "userspace",
               "errno": errno_name(refused) if refused else None, "rule": rule,
               "pid": ev.pid or None, "uid": ev.uid, "gid": ev.gid,
               "result": "ok" if result == 0 else errno_name(result), "mode": mode,
               "handler": self.enf.handler_name}
        if ev.path is None:
            rec["path_unknown"] = ev.path_unknown
        try:
            write_line(self.enf.audit.stream, json.dumps(rec, ensure_ascii=True) + "\n")
        except (OSError, ValueError):
            pass  # a closed or broken audit stream must not stop the filesystem

    def _filter_decision(self, op: str, place: Optional[Place], mode: str, subject: int) -> Decision:
        """The class's decision that sent this op to userspace `mode` for this requester
        (its rule is the deciding rule); without a class, a bare userspace decision (no
        rule known)."""
        bare = Decision("userspace", mode=mode)
        if place is None:
            return bare
        found = [self.enf.decision(place, atom, subject) for atom in ATOMS_OF_OP.get(op, ())]
        for d in found:
            if d.kind == "userspace" and d.mode == mode:
                return d
        return next((d for d in found if d.kind == "userspace"), bare)

    def _filter(self, req: Request) -> None:
        header = P.IN_HEADER.unpack(self.ch.buf)
        try:
            f = fusebpf.parse_filter_request(bytes(self.ch.view[:header.len]))
            in_len, names = split_in_args(f.opcode, f.args)
        except fusebpf.FuseBpfError as e:
            self.log(f"malformed filter request: {e}")
            self.ch.send(fusebpf.filter_reply(req.unique, -errno.EIO))
            return
        mode = "before" if f.phase == "pre" else "after"
        op = OP_NAMES.get(f.opcode, f"opcode {f.opcode}")
        path, place, unknown = self._filter_subject(f, names)
        ev = FilterEvent(op, path, pid=f.pid, uid=f.uid, gid=f.gid, path_unknown=unknown)
        d = self._filter_decision(op, place, mode, self.enf.subject(f.uid, f.gid))
        # The deciding rule: the class decision's (its default's when no rule decided),
        # or none at all when the class is unknown.
        rule = self.enf.audit.rule(d.rules[0] if d.rules else None) if place is not None else None
        result = None if f.phase == "pre" else (0 if not f.error_in else -f.error_in)
        refused = self._consult_filter(ev, mode, rule, result)
        if self.enf.handler is None or refused or d.audit:  # as Enforcer._log_userspace
            self._audit_filter(ev, mode, rule, refused, refused or (result or 0))
        if refused:
            self.ch.send(fusebpf.filter_reply(req.unique, -refused))
            return
        if f.phase == "pre":
            end = in_len
            if f.opcode in IMMUTABLE_LAST_NAME:
                end = IN_ARGS[f.opcode][0]
            payload = f.args[:end]
        else:
            payload = f.args[in_len:]
        reply = fusebpf.filter_reply(req.unique, 0, payload)
        if f.opcode == Op.LOOKUP and f.phase == "post":
            self.send_bpf_response(self.ch.fd, reply)  # lookup replies go through the ioctl
        else:
            self.ch.send(reply)
