"""The /dev/fuse connection: read requests, write replies, the passthrough ioctls.

Errors of the device are sorted here (see Channel) so that the servers see only requests,
Unmounted, or DeviceError.

One preallocated buffer is reused for every read (a fresh 1 MiB bytes object per request
would cost an mmap/munmap each). A request is valid only until the next read.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import sys
from dataclasses import dataclass
from typing import Callable, Optional, cast

from . import protocol as P
from fpol.compiler.errors import EnvironmentProblem

_TRANSIENT = (errno.EINTR, errno.EAGAIN)
_GONE = (errno.ENODEV, errno.ECONNABORTED)
_LOG_LIMIT = 10  # say what went wrong, but a flood of the same error must not fill the log


@dataclass
class Request:
    unique: int
    opcode: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    body: memoryview  # the in-args (extensions stripped)


DEVICE = "/dev/fuse"  # where Channel.open finds the device (tests point it elsewhere)


class Unmounted(Exception):
    """The connection is gone: the filesystem was unmounted or the connection aborted."""


class DeviceError(EnvironmentProblem):
    """/dev/fuse failed in a way that is neither transient nor the end of the connection."""


def _log_stderr(msg: str) -> None:
    try:
        print(f"fpol mount: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class Channel:
    """Transient errors (EINTR, EAGAIN, a request interrupted before it was read, a reply
    to a request the kernel has dropped) are absorbed here; the end of the connection
    (ENODEV, ECONNABORTED, end of file) is Unmounted; a malformed request is answered EIO
    (when it names one) and skipped; a reply the kernel rejects is replaced by an EIO reply
    so that the caller is not left waiting. Anything else is DeviceError."""

    def __init__(self, fd: int, max_write: int = P.MAX_WRITE,
                 log: Optional[Callable[[str], None]] = None):
        self.fd = fd
        # The kernel refuses reads smaller than header + fuse_write_in + max_write.
        self.buf = bytearray(max_write + 4096)
        self.view = memoryview(self.buf)
        self.log = log or _log_stderr
        self.malformed = 0  # requests skipped because they did not parse
        self.rejected = 0  # replies the kernel refused

    @classmethod
    def open(cls, path: Optional[str] = None) -> "Channel":
        return cls(os.open(path or DEVICE, os.O_RDWR | os.O_CLOEXEC))

    def clone(self) -> "Channel":
        """Another descriptor on this channel's connection (FUSE_DEV_IOC_CLONE), for a
        second thread: the kernel hands each request to one reader, whose reply must be
        written to the descriptor it was read from."""
        fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, P.FUSE_DEV_IOC_CLONE, struct.pack("<I", self.fd))
        except OSError:
            os.close(fd)
            raise
        return Channel(fd, len(self.buf) - 4096, self.log)

    def read(self) -> Request:
        while True:
            try:
                n = os.readv(self.fd, [self.buf])
            except OSError as e:
                if e.errno in _TRANSIENT or e.errno == errno.ENOENT:
                    # ENOENT: the request was interrupted before we read it.
                    continue
                if e.errno in _GONE:
                    raise Unmounted() from None
                raise DeviceError(f"reading {DEVICE} failed: {e.strerror} "
                                  f"({errno.errorcode.get(cast(int, e.errno), e.errno)})") from None
            if n == 0:
                raise Unmounted()
            if n < P.IN_HEADER.size:
                self._malformed(f"a {n}-byte read, shorter than a request header", None)
                continue
            h = P.IN_HEADER.unpack(self.buf)
            if h.len != n or h.total_extlen * 8 > n - P.IN_HEADER.size:
                self._malformed(f"a request whose header says {h.len} bytes "
                                f"({h.total_extlen * 8} of extensions) in a {n}-byte read "
                                f"(opcode {h.opcode})", h.unique)
                continue
            return Request(h.unique, h.opcode, h.nodeid, h.uid, h.gid, h.pid,
                           P.body_of(self.view, h))

    def _malformed(self, what: str, unique: Optional[int]) -> None:
        self.malformed += 1
        if self.malformed <= _LOG_LIMIT:
            self.log(f"skipped a malformed request from the kernel: {what}")
        if unique:
            self.send(P.reply_error(unique, errno.EIO))

    def send(self, data: bytes) -> None:
        self._send(data, retry_with_eio=True)

    def _send(self, data: bytes, retry_with_eio: bool) -> None:
        while True:
            try:
                os.write(self.fd, data)
                return
            except OSError as e:
                err = cast(int, e.errno)  # set by every failed system call
            if err in _TRANSIENT:
                continue
            # ENOENT: the caller was interrupted and the kernel dropped the request.
            if err == errno.ENOENT:
                return
            if err in _GONE:
                raise Unmounted() from None
            break
        # The kernel refused the reply (EINVAL: a bad length or errno; the request, if it
        # was found, is still waiting) -- answer it EIO instead, once.
        self.rejected += 1
        unique = P.OUT_HEADER.unpack(data).unique if len(data) >= P.OUT_HEADER.size else 0
        if self.rejected <= _LOG_LIMIT:
            self.log(f"the kernel rejected a reply ({len(data)} bytes, request {unique}): "
                     f"{os.strerror(err)}" + ("; answered EIO instead" if unique else ""))
        if retry_with_eio and unique:
            self._send(P.reply_error(unique, errno.EIO), retry_with_eio=False)

    def reply(self, unique: int, payload: bytes = b"") -> None:
        self.send(P.reply(unique, payload))

    def reply_error(self, unique: int, err: int) -> None:
        self.send(P.reply_error(unique, err))

    def notify(self, message: bytes) -> bool:
        """Send a notification; False if the kernel refused it (ENOENT: it holds no such
        node or name any more, which is what an invalidation wanted anyway)."""
        while True:
            try:
                os.write(self.fd, message)
                return True
            except OSError as e:
                if e.errno in _TRANSIENT:
                    continue
                if e.errno in _GONE:
                    raise Unmounted() from None
                return False

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
