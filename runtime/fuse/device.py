"""The /dev/fuse connection: read requests, write replies, the passthrough ioctls.

One preallocated buffer is reused for every read (a fresh 1 MiB bytes object per request
would cost an mmap/munmap each). A request is valid only until the next read.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

from . import protocol as P


@dataclass
class Request:
    unique: int
    opcode: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    body: memoryview  # the in-args (extensions stripped)


class Unmounted(Exception):
    """The connection is gone: the filesystem was unmounted or the connection aborted."""


class Channel:
    def __init__(self, fd: int, max_write: int = P.MAX_WRITE):
        self.fd = fd
        # The kernel refuses reads smaller than header + fuse_write_in + max_write.
        self.buf = bytearray(max_write + 4096)
        self.view = memoryview(self.buf)

    @classmethod
    def open(cls) -> "Channel":
        return cls(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))

    def read(self) -> Request:
        while True:
            try:
                n = os.readv(self.fd, [self.buf])
            except OSError as e:
                if e.errno == errno.ENOENT:  # the request was interrupted before we read it
                    continue
                if e.errno in (errno.ENODEV, errno.ECONNABORTED):
                    raise Unmounted() from None
                raise
            if n == 0:
                raise Unmounted()
            h = P.IN_HEADER.unpack(self.buf)
            return Request(h.unique, h.opcode, h.nodeid, h.uid, h.gid, h.pid,
                           P.body_of(self.view, h))

    def send(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError as e:
            # ENOENT: the caller was interrupted and the kernel dropped the request.
            if e.errno == errno.ENOENT:
                return
            if e.errno in (errno.ENODEV, errno.ECONNABORTED):
                raise Unmounted() from None
            raise

    def reply(self, unique: int, payload: bytes = b"") -> None:
        self.send(P.reply(unique, payload))

    def reply_error(self, unique: int, err: int) -> None:
        self.send(P.reply_error(unique, err))

    # --- passthrough ---------------------------------------------------------------------

    def backing_open(self, fd: int) -> int:
        """Register an open backing file with the kernel; returns its backing id."""
        return _ioctl_int(self.fd, P.FUSE_DEV_IOC_BACKING_OPEN, bytearray(P.backing_map(fd)))

    def backing_close(self, backing_id: int) -> None:
        _ioctl_int(self.fd, P.FUSE_DEV_IOC_BACKING_CLOSE,
                   bytearray(backing_id.to_bytes(4, "little")))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _ioctl_int(fd: int, request: int, arg: bytearray) -> int:
    """ioctl with a pointer argument, returning the call's non-negative result.

    fcntl.ioctl with a mutable buffer returns the C return value when mutate_flag is
    True, which is how BACKING_OPEN hands back the new id."""
    return fcntl.ioctl(fd, request, arg, True)
