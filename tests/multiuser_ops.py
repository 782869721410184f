"""Run filesystem syscalls for tests/test_multiuser.py as whatever user this process is.

`python3 multiuser_ops.py ROOT` reads one JSON op per line on stdin and answers one JSON
result per line on stdout, until stdin closes. Paths in ops are relative to ROOT. It is
started under `setpriv --reuid=U --regid=G ...`, so the kernel checks every op as that user;
it imports nothing from fpol (it runs with the system python as an unprivileged user).

An op is {"op": NAME, ...arguments..., "umask": optional octal int}. A result is
{"rc": 0 or an errno name, "value": what the op observed (contents, a stat, names)}.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
import sys

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: str, times, follow: bool = True) -> None:
    """times: None (both now) or [atime, mtime], each "now", "omit" or nanoseconds."""
    if times is None:
        arg = None
    else:
        ts = (_Timespec * 2)()
        for i, t in enumerate(times):
            if t == "now":
                ts[i] = _Timespec(0, UTIME_NOW)
            elif t == "omit":
                ts[i] = _Timespec(0, UTIME_OMIT)
            else:
                ts[i] = _Timespec(t // 1_000_000_000, t % 1_000_000_000)
        arg = ts
    flags = 0 if follow else 0x100  # AT_SYMLINK_NOFOLLOW
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), arg, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


def flags_of(names) -> int:
    v = 0
    for n in names:
        v |= getattr(os, n)
    return v


def stat_view(st: os.stat_result) -> dict:
    return {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid, "gid": st.st_gid,
            "size": None if stat.S_ISDIR(st.st_mode) else st.st_size,
            "nlink": None if stat.S_ISDIR(st.st_mode) else st.st_nlink}


def _open(path: str, flags: int, mode: int = 0o644) -> int:
    """open(2) that never blocks on a FIFO without a peer (the sequences make FIFOs);
    O_NONBLOCK changes nothing else for files and directories."""
    return os.open(path, flags | os.O_NONBLOCK, mode)


def run(root: str, op: dict):
    name = op["op"]
    p = os.path.join(root, op["path"]) if "path" in op else None
    if name in ("create", "open"):
        flags = flags_of(op.get("flags", []))
        if name == "create":
            flags |= os.O_CREAT
        fd = _open(p, flags, op.get("mode", 0o644))
        try:
            if "data" in op:
                os.write(fd, op["data"].encode())
            if op.get("read"):
                data = os.read(fd, 1 << 16)
                return {"stat": stat_view(os.fstat(fd)), "data": data.decode(errors="replace")}
            return stat_view(os.fstat(fd))
        finally:
            os.close(fd)
    if name == "read":
        fd = _open(p, os.O_RDONLY)
        try:
            return os.read(fd, 1 << 16).decode(errors="replace")
        finally:
            os.close(fd)
    if name == "write":  # write(2) on an existing file: O_WRONLY (| O_APPEND)
        fd = _open(p, os.O_WRONLY | (os.O_APPEND if op.get("append") else 0))
        try:
            os.write(fd, op["data"].encode())
            return stat_view(os.fstat(fd))
        finally:
            os.close(fd)
    if name == "mkdir":
        os.mkdir(p, op.get("mode", 0o777))
        return stat_view(os.lstat(p))
    if name == "mkfifo":
        os.mknod(p, stat.S_IFIFO | op.get("mode", 0o666))
        return stat_view(os.lstat(p))
    if name == "chmod":
        os.chmod(p, op["mode"])
        return stat_view(os.stat(p))
    if name == "chown":  # -1 leaves that id as it is (chgrp: uid -1)
        os.chown(p, op["uid"], op["gid"], follow_symlinks=op.get("follow", True))
        return stat_view(os.lstat(p))
    if name == "truncate":
        os.truncate(p, op["size"])
        return stat_view(os.stat(p))
    if name == "ftruncate":
        fd = _open(p, os.O_WRONLY)
        try:
            os.ftruncate(fd, op["size"])
            return stat_view(os.fstat(fd))
        finally:
            os.close(fd)
    if name == "utime":
        utimensat(p, op.get("times"), op.get("follow", True))
        st = os.stat(p) if op.get("follow", True) else os.lstat(p)
        return {"atime": st.st_atime_ns, "mtime": st.st_mtime_ns} \
            if op.get("times") and all(isinstance(t, int) for t in op["times"]) else None
    if name == "rename":
        os.rename(p, os.path.join(root, op["to"]))
        return None
    if name == "unlink":
        os.unlink(p)
        return None
    if name == "rmdir":
        os.rmdir(p)
        return None
    if name == "link":
        os.link(p, os.path.join(root, op["to"]), follow_symlinks=False)
        return stat_view(os.lstat(p))
    if name == "symlink":
        os.symlink(op["target"], p)
        return stat_view(os.lstat(p))
    if name == "readlink":
        return os.readlink(p)
    if name == "stat":
        return stat_view(os.stat(p))
    if name == "lstat":
        return stat_view(os.lstat(p))
    if name == "listdir":
        return sorted(os.listdir(p))
    if name == "access":
        return os.access(p, op["mode"])
    raise ValueError(f"unknown op {name}")


def main() -> int:
    root = sys.argv[1]
    for line in sys.stdin:
        op = json.loads(line)
        old = os.umask(op["umask"]) if "umask" in op else None
        try:
            out = {"rc": 0, "value": run(root, op)}
        except OSError as e:
            out = {"rc": errno.errorcode.get(e.errno, str(e.errno))}
        finally:
            if old is not None:
                os.umask(old)
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
