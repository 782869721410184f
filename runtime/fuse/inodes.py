"""The daemon's view of the tree: nodeid <-> backing object, place, lookup count; open handles.

Every node holds an O_PATH|O_NOFOLLOW descriptor of its backing object, opened relative to
its parent's descriptor, so operations never resolve a path through the backing tree: a
symlink inside it (or one swapped in later) cannot lead the daemon outside the backing root.
Nodes are keyed by name under their parent, not by backing inode: the same file reached
through two names (hard links) gets two nodeids, each with the class of its own path, which
is how the policy decides (per path). A node holds its class as the policy view's `Place`,
which it only hands back to that view; a reload gives every node a place in the new view.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, Callable, Optional, cast

from . import protocol as P

if TYPE_CHECKING:
    from fpol.compiler.view import Place, PolicyView

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def proc_path(fd: int) -> str:
    """The magic link that names exactly the object behind fd (no path walk in the tree)."""
    return f"/proc/self/fd/{fd}"


class Node:
    __slots__ = ("nodeid", "parent", "name", "fd", "place", "nlookup", "dev", "ino", "mode",
                 "children", "backing_id", "backing_users", "last_path")

    def __init__(self, nodeid: int, parent: Optional["Node"], name: Optional[bytes], fd: int,
                 place: Place, st: os.stat_result):
        self.nodeid = nodeid
        self.parent = parent  # None for the root and for detached (unlinked) nodes
        self.name = name
        self.fd = fd
        self.place = place  # its class, as the current policy view's handle
        self.nlookup = 0
        self.dev, self.ino, self.mode = st.st_dev, st.st_ino, st.st_mode
        self.children: dict[bytes, Node] = {}
        self.backing_id = 0  # passthrough id of this node, registered until it is forgotten
        self.backing_users = 0
        # Once unlinked: the path it had, by which a reload classifies it again (its open
        # handles are still decided by a class).
        self.last_path: Optional[tuple[bytes, ...]] = None

    @property
    def is_root(self) -> bool:
        return self.nodeid == P.ROOT_ID

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def path(self) -> Optional[tuple[bytes, ...]]:
        """Components from the mount root, or None once the node is no longer linked."""
        parts: list[bytes] = []
        n = self
        while not n.is_root:
            if n.parent is None:
                return None
            assert n.name is not None  # linked, so named
            parts.append(n.name)
            n = n.parent
        return tuple(reversed(parts))

    def entry(self) -> tuple["Node", bytes]:
        """(parent, name) for *at() calls that must name the object itself (symlinks)."""
        if self.parent is None:
            raise OSError(errno.ENOENT, "object no longer linked")
        assert self.name is not None  # linked, so named
        return self.parent, self.name


class InodeTable:
    def __init__(self, root_fd: int, root_place: Place):
        self.root = Node(P.ROOT_ID, None, None, root_fd, root_place, os.stat(root_fd))
        self.root.nlookup = 1  # never forgotten
        self.nodes: dict[int, Node] = {P.ROOT_ID: self.root}
        self._next = P.ROOT_ID + 1  # nodeids are never reused, so generation stays 0

    def get(self, nodeid: int) -> Node:
        node = self.nodes.get(nodeid)
        if node is None:
            raise OSError(errno.ESTALE, f"unknown nodeid {nodeid}")
        return node

    def __len__(self) -> int:
        return len(self.nodes)

    # --- names -> nodes ------------------------------------------------------------------

    def lookup(self, parent: Node, name: bytes, place: Place) -> tuple[Node, os.stat_result]:
        """Look up parent/name in the backing tree and count the lookup.

        A name already known costs one fstatat(); a new object is opened O_PATH first and
        described by fstat() of that descriptor, so node and reply agree even in a race."""
        node = parent.children.get(name)
        if node is not None:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            if self._same(node, st):
                node.mode = st.st_mode
                node.nlookup += 1
                return node, st
        fd = os.open(name, O_PATH_FLAGS, dir_fd=parent.fd)
        try:
            st = os.stat(fd)
        except BaseException:
            os.close(fd)
            raise
        return self.remember(parent, name, fd, st, place), st

    @staticmethod
    def _same(node: Node, st: os.stat_result) -> bool:
        return (node.dev, node.ino) == (st.st_dev, st.st_ino) \
            and stat.S_IFMT(node.mode) == stat.S_IFMT(st.st_mode)

    def remember(self, parent: Node, name: bytes, fd: int, st: os.stat_result,
                 place: Place) -> Node:
        """Count one lookup of parent/name, described by fd (whose ownership it takes)."""
        node = parent.children.get(name)
        if node is not None and self._same(node, st):
            os.close(fd)
            node.mode = st.st_mode
            node.place = place
        else:
            if node is not None:  # the backing tree changed behind us: a new object
                self._detach(node)
            node = Node(self._next, parent, name, fd, place, st)
            self._next += 1
            self.nodes[node.nodeid] = node
            parent.children[name] = node
        node.nlookup += 1
        return node

    def forget(self, nodeid: int, count: int) -> Optional[Node]:
        """Count the kernel forgetting lookups; returns the node if it is gone now."""
        node = self.nodes.get(nodeid)
        if node is None or node.is_root:
            return None
        node.nlookup -= count
        if node.nlookup > 0:
            return None
        del self.nodes[nodeid]
        if node.parent is not None and node.parent.children.get(cast(bytes, node.name)) is node:
            del node.parent.children[cast(bytes, node.name)]
        os.close(node.fd)
        node.fd = -1
        return node

    # --- namespace changes ---------------------------------------------------------------

    def unlinked(self, parent: Node, name: bytes) -> None:
        node = parent.children.get(name)
        if node is not None:
            self._detach(node)

    def moved(self, parent: Node, name: bytes, newparent: Node, newname: bytes,
              exchange: bool, child: Callable[[Place, bytes], Place]) -> None:
        """Mirror rename(2) (or RENAME_EXCHANGE) and give moved subtrees their new places
        (`child`: the view's, a child name's place under its parent's)."""
        src = parent.children.pop(name, None)
        dst = newparent.children.pop(newname, None)
        if dst is not None and not exchange:
            dst.last_path = dst.path()
            dst.parent = None
            dst.name = None
            dst = None
        for node, p, n in ((src, newparent, newname), (dst, parent, name)):
            if node is not None:
                node.parent, node.name = p, n
                p.children[n] = node
                self._reclassify(node, child)

    def _reclassify(self, node: Node, child: Callable[[Place, bytes], Place]) -> None:
        for n in self.subtree(node):
            assert n.parent is not None and n.name is not None  # linked, so named
            n.place = child(n.parent.place, n.name)

    @staticmethod
    def subtree(node: Optional[Node]) -> list[Node]:
        """node and every known node below it, parents before children ([] for None)."""
        out, stack = [], [node] if node is not None else []
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children.values())
        return out

    def reclassify_all(self, view: PolicyView) -> list[Node]:
        """Give every node its place in another policy's view (a reload): linked nodes by
        their path from the root, unlinked ones by the path they had. No place of the old
        view is left behind (the new view would refuse it). Returns every node."""
        for top in self.nodes.values():
            if top.parent is not None:
                continue  # reached from its top (the root, or an unlinked directory)
            top.place = view.root if top.is_root else view.classify(top.last_path or ())
            for n in self.subtree(top)[1:]:
                assert n.parent is not None and n.name is not None  # below top: linked
                n.place = view.child(n.parent.place, n.name)
        return list(self.nodes.values())

    def _detach(self, node: Node) -> None:
        node.last_path = node.path()
        if node.parent is not None and node.parent.children.get(cast(bytes, node.name)) is node:
            del node.parent.children[cast(bytes, node.name)]
        node.parent = None
        node.name = None

    def close_all(self) -> None:
        for node in self.nodes.values():
            if node.fd >= 0:
                os.close(node.fd)
                node.fd = -1
        self.nodes.clear()


class Handle:
    """An open file or directory: the daemon's own descriptor for it."""

    __slots__ = ("fh", "node", "fd", "flags", "passthrough", "entries")

    def __init__(self, node: Node, fd: int, flags: int):
        self.fh = 0
        self.node = node
        self.fd = fd
        self.flags = flags
        self.passthrough = False
        self.entries: Optional[list] = None  # directory snapshot for readdir offsets


class HandleTable:
    def __init__(self):
        self.handles: dict[int, Handle] = {}
        self._next = 1

    def add(self, handle: Handle) -> int:
        handle.fh = self._next
        self._next += 1
        self.handles[handle.fh] = handle
        return handle.fh

    def get(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise OSError(errno.EBADF, f"unknown file handle {fh}")
        return h

    def pop(self, fh: int) -> Handle:
        h = self.get(fh)
        del self.handles[fh]
        return h

    def close_all(self) -> None:
        for h in self.handles.values():
            try:
                os.close(h.fd)
            except OSError:
                pass
        self.handles.clear()
