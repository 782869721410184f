"""Acting as the requester: the daemon's rights are never lent to the user it serves.

The mount is made with `default_permissions`, so the kernel checks the backing tree's
ownership and modes before a request reaches the daemon. The daemon also performs every
backing call that creates, changes, removes or opens an object with the requester's
filesystem credentials (fsuid, fsgid and supplementary groups, this thread only): the
backing filesystem then checks permissions exactly as it would for that user directly
(ACLs, sticky and set-group-ID directories, CAP_* of a root requester), and new objects get
that user's ownership (or the directory's group where it is set-group-ID) with no window in
which they belong to root.

A requester whose groups cannot be read (the process is gone, or pid 0) acts with its fsgid
alone: fewer rights, never more.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from typing import Iterator

from .. import libc


def requester_groups(pid: int) -> list[int]:
    """The supplementary groups of the thread that made the request (FUSE's pid is the
    thread id, and credentials are per thread), or [] if it cannot be read."""
    if pid <= 0:
        return []
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return [int(g) for g in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


_SAME = nullcontext()  # the requester is the daemon's own identity: nothing to switch


class Credentials:
    """Switches this thread's filesystem credentials to a requester's and back."""

    def __init__(self) -> None:
        self.uid, self.gid = os.geteuid(), os.getegid()
        self.groups = os.getgroups()
        self.switches = 0  # how many requests needed a switch (the daemon's summary)

    def acting_as(self, uid: int, gid: int, pid: int):
        """A context in which this thread acts as (uid, gid) with the groups of `pid`."""
        if uid == self.uid and gid == self.gid:
            return _SAME  # root asking: the common case costs no switch and no generator
        return self._switched(uid, gid, pid)

    @contextmanager
    def _switched(self, uid: int, gid: int, pid: int) -> Iterator[None]:
        self.switches += 1
        try:
            libc.set_thread_groups(requester_groups(pid))
            libc.set_thread_fsids(uid, gid)
            yield
        finally:
            self._restore()

    def _restore(self) -> None:
        libc.set_thread_fsids(self.uid, self.gid)
        libc.set_thread_groups(self.groups)
