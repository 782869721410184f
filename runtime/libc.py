"""The few libc calls the FUSE daemon needs that Python's os module lacks.

mount(2), umount2(2), renameat2(2) (RENAME_NOREPLACE / RENAME_EXCHANGE) and fallocate(2)
with a mode. This is the second and last module in fpol that uses ctypes (the first is
runtime/libbpf.py); keep it that way: anything os/fcntl can do goes through them instead.
Failures raise OSError with the C errno, like the os module.
"""

from __future__ import annotations

import ctypes
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
