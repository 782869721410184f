"""The few libc calls the FUSE daemon needs that Python's os module lacks.

mount(2), umount2(2), renameat2(2) (RENAME_NOREPLACE / RENAME_EXCHANGE), fallocate(2)
with a mode, utimensat(2) with UTIME_NOW/UTIME_OMIT, and the per-thread setfsuid(2),
setfsgid(2) and setgroups(2) the daemon uses to act as the requester. This is the second and last module in fpol that uses ctypes (the first is
runtime/libbpf.py); keep it that way: anything os/fcntl can do goes through them instead.
Failures raise OSError with the C errno, like the os module.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Optional

MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MNT_FORCE, MNT_DETACH = 0x1, 0x2
AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)

_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_char_p]
_mount.restype = ctypes.c_int
_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_umount2.restype = ctypes.c_int
_renameat2 = _libc.renameat2  # glibc 2.28+
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
_renameat2.restype = ctypes.c_int
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def _check(rc: int, what: str, path=None) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def mount(source: str, target: str, fstype: str, flags: int, data: Optional[str]) -> None:
    _check(_mount(os.fsencode(source), os.fsencode(target), fstype.encode(), flags,
                  data.encode() if data is not None else None), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_umount2(os.fsencode(target), flags), "umount", target)


def renameat2(olddirfd: int, oldname: bytes, newdirfd: int, newname: bytes, flags: int) -> None:
    _check(_renameat2(olddirfd, oldname, newdirfd, newname, flags), "renameat2", oldname)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(_fallocate(fd, mode, offset, length), "fallocate")


# --- acting as a requester (runtime/fuse/creds.py) -------------------------------------------
# setfsuid/setfsgid/setgroups as raw system calls: they change only the calling thread's
# credentials (glibc's setgroups() would change every thread's), so a daemon thread acting
# for one requester never lends those rights to a request another thread serves.
_SYSCALLS = {  # machine -> (setgroups, setfsuid, setfsgid)
    "x86_64": (116, 122, 123),
    "aarch64": (159, 151, 152),
    "riscv64": (159, 151, 152),
}
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _numbers() -> tuple[int, int, int]:
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        raise OSError(errno.ENOSYS, f"no system call numbers for {machine}")
    return _SYSCALLS[machine]


def set_thread_groups(groups: list[int]) -> None:
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    _check(_syscall(ctypes.c_long(_numbers()[0]), ctypes.c_long(len(groups)), arr),
           "setgroups")


def set_thread_fsids(uid: int, gid: int) -> None:
    """setfsgid then setfsuid for this thread; raises EPERM if either did not take (the
    calls report no errors, only the previous value: asking with -1 reads it back)."""
    _, nr_fsuid, nr_fsgid = _numbers()
    for nr, value in ((nr_fsgid, gid), (nr_fsuid, uid)):
        _syscall(ctypes.c_long(nr), ctypes.c_long(value))
        if _syscall(ctypes.c_long(nr), ctypes.c_long(-1)) & 0xFFFFFFFF != value:
            raise OSError(errno.EPERM, f"could not take filesystem id {value}")


UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
AT_SYMLINK_NOFOLLOW = 0x100


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_utimensat = _libc.utimensat
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_utimensat.restype = ctypes.c_int


def utimensat(dirfd: int, path: bytes, atime_ns: Optional[int], mtime_ns: Optional[int],
              now_atime: bool = False, now_mtime: bool = False, follow: bool = True) -> None:
    """utimensat(2) with UTIME_NOW and UTIME_OMIT, which os.utime lacks: a time given is
    set, a time marked now is UTIME_NOW (allowed to writers, not only the owner), and a
    time that is None is left as it is."""
    def spec(ns: Optional[int], now: bool) -> _Timespec:
        if now:
            return _Timespec(0, UTIME_NOW)
        if ns is None:
            return _Timespec(0, UTIME_OMIT)
        return _Timespec(ns // 10**9, ns % 10**9)
    times = (_Timespec * 2)(spec(atime_ns, now_atime), spec(mtime_ns, now_mtime))
    _check(_utimensat(dirfd, path, times, 0 if follow else AT_SYMLINK_NOFOLLOW), "utimensat",
           path)
