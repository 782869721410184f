"""Operations, op groups, and the request facets ("atoms") a decision is made for.

LANGUAGE.md §3 defines single ops and groups whose membership depends on request
details (open flags, access mask, which end of a rename). An *atom* is one op with
its details reduced to what group membership needs, e.g. `open:rw` (open for
reading and writing), `access:x` (access(2) with X_OK only), `rename:dst`. Every
request maps to one or two atoms; every rule's op list expands to a set of atoms.
The table here is the one docs/language.md documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from .errors import UsageProblem

# The fuse_ops hooks, by their short names, in the order the language reference lists them.
SINGLE_OPS: tuple[str, ...] = (
    "lookup", "getattr", "setattr", "access", "open", "opendir", "create", "mknod",
    "mkdir", "unlink", "rmdir", "rename", "link", "symlink", "readlink", "read",
    "write", "fallocate", "copy_file_range", "lseek", "flush", "fsync", "fsyncdir",
    "release", "releasedir", "readdir", "statfs", "getxattr", "listxattr",
    "setxattr", "removexattr",
)

GROUPS: tuple[str, ...] = ("read", "write", "create", "delete", "list", "stat", "exec", "all")

# Ops that act on an already-open file: in `all` and their own name only, and
# never subject to a non-allow default (denying them breaks programs allowed to open).
HANDLE_OPS = frozenset({"flush", "fsync", "fsyncdir", "release", "releasedir", "lseek"})

# Namespace ops: the object is the named child, judged in the parent's class.
NAMESPACE_OPS = frozenset({"lookup", "create", "mknod", "mkdir", "symlink", "unlink",
                           "rmdir", "link", "rename"})

# Ops that take a second path (the destination).
TWO_PATH_OPS = frozenset({"rename", "link", "copy_file_range"})


def _bits(r: int, w: int, x: int) -> str:
    return ("r" if r else "") + ("w" if w else "") + ("x" if x else "") or "-"


def _atoms_of(op: str) -> tuple[str, ...]:
    if op == "open":
        return tuple(f"open:{_bits(r, w, x)}" for r, w in ((1, 0), (0, 1), (1, 1)) for x in (0, 1))
    if op == "create":
        return ("create:w", "create:rw")
    if op == "access":
        return tuple(f"access:{_bits(r, w, x)}" for r in (0, 1) for w in (0, 1) for x in (0, 1))
    if op in TWO_PATH_OPS:
        return (f"{op}:src", f"{op}:dst")
    return (op,)


ATOMS: tuple[str, ...] = tuple(a for op in SINGLE_OPS for a in _atoms_of(op))
ATOMS_OF_OP: dict[str, tuple[str, ...]] = {op: _atoms_of(op) for op in SINGLE_OPS}


def atom_op(atom: str) -> str:
    return atom.split(":", 1)[0]


def _groups_of(atom: str) -> frozenset[str]:
    op, _, detail = atom.partition(":")
    g: set[str] = set()
    if op == "open":
        if "r" in detail:
            g.add("read")
        if "w" in detail:
            g.add("write")
        if "x" in detail:
            g.add("exec")
    elif op == "create":
        g |= {"write", "create"}
        if "r" in detail:
            g.add("read")
    elif op == "access":
        if "r" in detail:
            g.add("read")
        if "w" in detail:
            g.add("write")
        if "x" in detail:
            g.add("exec")
        if "r" not in detail and "w" not in detail:
            g.add("stat")
    elif atom == "rename:src":
        g |= {"write", "delete"}
    elif atom == "rename:dst":
        g |= {"write", "create"}
    elif atom == "link:dst":
        g |= {"write", "create"}
    elif atom == "copy_file_range:src":
        g.add("read")
    elif atom == "copy_file_range:dst":
        g.add("write")
    elif op in ("mknod", "mkdir", "symlink"):
        g |= {"write", "create"}
    elif op in ("unlink", "rmdir"):
        g |= {"write", "delete"}
    elif op in ("opendir", "readdir"):
        g.add("list")
    elif op in ("getattr", "statfs", "getxattr", "listxattr", "readlink"):
        g.add("stat")
    elif op in ("setattr", "setxattr", "removexattr", "write", "fallocate"):
        g.add("write")
    elif op == "read":
        g.add("read")
    # lookup, link:src and the handle ops belong to no group but `all`.
    return frozenset(g)


# atom -> every op name and group name a rule may use to select it.
SELECTORS: dict[str, frozenset[str]] = {
    a: _groups_of(a) | {atom_op(a), "all"} for a in ATOMS
}

# op or group name -> the atoms it selects.
EXPANSION: dict[str, frozenset[str]] = {
    name: frozenset(a for a in ATOMS if name in SELECTORS[a]) for name in SINGLE_OPS + GROUPS
}

OP_NAMES = frozenset(SINGLE_OPS) | frozenset(GROUPS)


def is_handle_atom(atom: str) -> bool:
    return atom_op(atom) in HANDLE_OPS


# --- request details ----------------------------------------------------------------

O_ACCMODE = 0o3
O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
OPEN_FLAGS: dict[str, int] = {
    "O_RDONLY": 0o0, "O_WRONLY": 0o1, "O_RDWR": 0o2, "O_CREAT": 0o100, "O_EXCL": 0o200,
    "O_NOCTTY": 0o400, "O_TRUNC": 0o1000, "O_APPEND": 0o2000, "O_NONBLOCK": 0o4000,
    "O_DSYNC": 0o10000, "O_DIRECT": 0o40000, "O_LARGEFILE": 0o100000,
    "O_DIRECTORY": 0o200000, "O_NOFOLLOW": 0o400000, "O_NOATIME": 0o1000000,
    "O_CLOEXEC": 0o2000000, "O_SYNC": 0o4010000, "O_PATH": 0o10000000,
    # The kernel marks opens made by execve(2) with __FMODE_EXEC; FUSE passes it on.
    "FMODE_EXEC": 0o40,
}
FMODE_EXEC = OPEN_FLAGS["FMODE_EXEC"]

MAY_EXEC, MAY_WRITE, MAY_READ, MAY_APPEND = 1, 2, 4, 8


def open_atom(op: str, flags: int) -> str:
    """The atom of an open or create with these open(2) flags."""
    acc = flags & O_ACCMODE
    r = acc in (O_RDONLY, O_RDWR) or acc == 3
    w = acc in (O_WRONLY, O_RDWR) or acc == 3 or bool(flags & (OPEN_FLAGS["O_TRUNC"] | OPEN_FLAGS["O_APPEND"]))
    if op == "create":
        return f"create:{'rw' if r else 'w'}"
    return f"open:{_bits(r, w, bool(flags & FMODE_EXEC))}"


def access_atom(mask: int) -> str:
    return "access:" + _bits(bool(mask & MAY_READ), bool(mask & (MAY_WRITE | MAY_APPEND)),
                             bool(mask & MAY_EXEC))


class DetailError(UsageProblem, ValueError):
    """A request detail (flags or mask) that cannot be understood."""


def parse_flags(text: str) -> int:
    """`O_WRONLY|O_TRUNC` (names or numbers, `|`-separated) -> int."""
    value = 0
    for part in text.replace(" ", "").split("|"):
        if not part:
            raise DetailError(f"empty flag in `{text}`")
        if part in OPEN_FLAGS:
            value |= OPEN_FLAGS[part]
            continue
        try:
            value |= int(part, 0)
        except ValueError:
            from .diagnostics import did_you_mean

            hint = did_you_mean(part, OPEN_FLAGS) or "flags are O_* names or numbers joined by |"
            raise DetailError(f"unknown open flag `{part}`; {hint}") from None
    return value


def parse_mask(text: str) -> int:
    """`rw`, `x`, `-` (or a number) -> MAY_* mask."""
    if text in ("", "-", "f", "F_OK"):
        return 0
    if text.isdigit():
        return int(text)
    mask = 0
    for ch in text:
        bit = {"r": MAY_READ, "w": MAY_WRITE, "x": MAY_EXEC}.get(ch)
        if bit is None:
            raise DetailError(f"unknown access mask letter `{ch}` in `{text}`; use r, w and x")
        mask |= bit
    return mask


@dataclass(frozen=True)
class RequestAtoms:
    """The atoms a request is judged as: at its object and, for two-path ops, at the destination."""

    source: str
    destination: Optional[str]


def request_atoms(op: str, flags: int = 0, mask: int = 0) -> RequestAtoms:
    if op not in SINGLE_OPS:
        raise DetailError(f"unknown operation `{op}`")
    if op in ("open", "create"):
        return RequestAtoms(open_atom(op, flags), None)
    if op == "access":
        return RequestAtoms(access_atom(mask), None)
    if op in TWO_PATH_OPS:
        return RequestAtoms(f"{op}:src", f"{op}:dst")
    return RequestAtoms(op, None)


def compress_atoms(atoms) -> str:
    """The atoms as text, naming an op (`open`) rather than its atoms where all are listed."""
    have = set(atoms)
    out: list[str] = []
    for op in SINGLE_OPS:
        every = ATOMS_OF_OP[op]
        if all(a in have for a in every):
            out.append(op)
        else:
            out.extend(a for a in every if a in have)
    return ", ".join(out)
