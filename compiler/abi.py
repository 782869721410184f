"""The ABI: what the compiler, the generated C and the runtime must agree on, in one
module. lower.py writes decision words, the templates take their macros and struct
members from here, and runtime/engine.py packs requests and reads results and words
back with the same description, so none of them can drift apart.

The decision word comes first: one 32-bit value per decision, shared by the generated C
(both objects), the compiler that writes it and the kernel engine that reads it back.

    bits 0-1   kind: 0 allow, 1 deny, 2 userspace
    bits 2-3   userspace mode: 0 instead, 1 before, 2 after
    bit  4     audit
    bit  5     complained (a deny that complain mode turned into allow + audit)
    bit  6     realised (decided by the fuse-bpf realisation, not a rule: see realisation.md)
    bits 8-15  errno of a deny
    bits 16-31 deciding rule + 1 (0: the default)

`pack` and `unpack` turn a decision into its word and back. templates/logic.h.j2 takes
its FPOL_* macros from `C_MACROS`, so the C and the Python cannot drift apart.

Then the check object's request and result layouts: the C structs
templates/check.bpf.c.j2 declares and the bytes runtime/engine.py writes and reads, from
one description. A layout is a list of fields (C type, name, array dimensions, comment).
`c_fields` renders the members of the C struct (`C_LAYOUT` holds them for the template);
`pack_struct` and `unpack_struct` turn a dict of values into the struct's bytes and back
(little-endian, no padding: every layout here is made of 32- and 64-bit fields before
byte arrays, in an order that needs none).
"""

from __future__ import annotations

import errno as errno_module
import struct
from dataclasses import dataclass
from math import prod
from typing import Any, Iterable, Optional


# The decision word.

KIND_CODE = {"allow": 0, "deny": 1, "userspace": 2}
MODE_CODE = {None: 0, "instead": 0, "before": 1, "after": 2}
KIND_MASK = 3
MODE_SHIFT = 2
AUDIT_BIT = 4
COMPLAINED_BIT = 5
REALISED_BIT = 6
ERRNO_SHIFT = 8
RULE_SHIFT = 16

REALISED = 1 << REALISED_BIT

# The values the generated C's macros are made of (templates/logic.h.j2).
C_MACROS = {"kind_mask": KIND_MASK, "allow": KIND_CODE["allow"], "deny": KIND_CODE["deny"],
            "userspace": KIND_CODE["userspace"], "audit_bit": AUDIT_BIT,
            "complained_bit": COMPLAINED_BIT, "realised_bit": REALISED_BIT,
            "errno_shift": ERRNO_SHIFT, "rule_shift": RULE_SHIFT}


def pack(kind: str, mode: Optional[str], audit: bool, complained: bool,
         errno: Optional[str], rule_number: Optional[int]) -> int:
    word = KIND_CODE[kind] | MODE_CODE[mode] << MODE_SHIFT | int(audit) << AUDIT_BIT \
        | int(complained) << COMPLAINED_BIT
    if errno:
        word |= getattr(errno_module, errno) << ERRNO_SHIFT
    if rule_number is not None:
        word |= (rule_number + 1) << RULE_SHIFT
    return word


def unpack(word: int) -> dict:
    kinds = {v: k for k, v in KIND_CODE.items()}
    modes = {0: "instead", 1: "before", 2: "after"}
    kind = word & KIND_MASK
    errno = (word >> ERRNO_SHIFT) & 0xFF
    rule = (word >> RULE_SHIFT) - 1
    return {
        "kind": kinds[kind],
        "mode": modes[(word >> MODE_SHIFT) & 3] if kind == KIND_CODE["userspace"] else None,
        "audit": bool(word >> AUDIT_BIT & 1),
        "complained": bool(word >> COMPLAINED_BIT & 1),
        "errno": _errno_name(errno) if kind == KIND_CODE["deny"] else None,
        "rule": rule if rule >= 0 else None,
        "realised": bool(word & REALISED),
    }


def _errno_name(value: int) -> str:
    from .analyse import CANONICAL_ERRNO

    return CANONICAL_ERRNO.get(value, str(value))


# The check object's struct layouts.

MAX_DEPTH = 16  # path components a request carries
NAME_SLOT = 256  # bytes per component name


@dataclass(frozen=True)
class Field:
    ctype: str  # __u8 | __u32 | __u64
    name: str
    dims: tuple[Any, ...] = ()  # array dimensions: numbers, or (C name, number) pairs
    comment: str = ""

    @property
    def count(self) -> int:
        return prod(d[1] if isinstance(d, tuple) else d for d in self.dims)

    def declaration(self) -> str:
        dims = "".join(f"[{d[0] if isinstance(d, tuple) else d}]" for d in self.dims)
        return f"{self.ctype} {self.name}{dims};"


_FORMAT = {"__u8": "B", "__u32": "I", "__u64": "Q"}
_DEPTH = ("FPOL_MAX_DEPTH", MAX_DEPTH)

# struct fpol_request: what fpol_check decides (written into fpol_requests[0]).
REQUEST = (
    Field("__u32", "op"),
    Field("__u32", "flags", (), "open(2) flags, for open and create"),
    Field("__u32", "mask", (), "MAY_* mask, for access"),
    Field("__u32", "depth", (2,), "components of the object path and of the destination"),
    Field("__u32", "dir_nodeid", (2,), "the nodeid fuse-bpf shows for each parent: 1 root, 0 any other"),
    Field("__u32", "out_cls", (2,), "filled in: the classes fpol_decide found"),
    Field("__u32", "out_parent", (2,)),
    Field("__u32", "len", (2, _DEPTH)),
    Field("__u8", "name", (2, _DEPTH, NAME_SLOT)),
)

# Who is asking, at the end of a request, in policies with subject conditions.
SUBJECT = (
    Field("__u32", "uid", (), "who is asking: the requester's fsuid and fsgid"),
    Field("__u32", "gid"),
)

# struct fpol_result: fpol_check's answer, in its context.
RESULT = (
    Field("__u32", "word"),
    Field("__u32", "cls", (2,), "class of the object, and of the destination when walked"),
    Field("__u32", "parent", (2,), "class of their parent directories"),
)

# struct fpol_hook_request: one fuse_ops program call, for the dispatch model (fpol_hook).
HOOK_REQUEST = (
    Field("__u32", "hook", (), "enum fpol_hook_kind"),
    Field("__u32", "cls", (), "the class whose tables the program reads"),
    Field("__u32", "op", (), "FPOL_OP_* for object, create and remove hooks"),
    Field("__u32", "flags", (), "open(2) flags, the access mask, or rename2 flags"),
    Field("__u32", "opcode", (), "meta->opcode & FUSE_OPCODE_FILTER"),
    Field("__u32", "pad"),
    Field("__u64", "nodeid", (), "meta->nodeid"),
    Field("__u64", "newdir", (), "rename: in->newdir"),
    Field("__u32", "len", (2,)),
    Field("__u8", "name", (2, NAME_SLOT)),
)

HOOK_SUBJECT = (
    Field("__u32", "uid", (), "who is asking"),
    Field("__u32", "gid"),
)

HOOK_RESULT = (
    Field("__u32", "code", (), "the program's return value"),
    Field("__u32", "word", (), "the decision word behind it"),
    Field("__u32", "child", (), "the child class the program computed, if any"),
)


def c_fields(fields: Iterable[Field], column: int) -> str:
    """The struct members, one per line, comments starting at `column` (after the tab)."""
    lines = []
    for f in fields:
        decl = f.declaration()
        if f.comment:
            decl = f"{decl.ljust(column - 1)} /* {f.comment} */"
        lines.append(f"\t{decl}\n")
    return "".join(lines)


def _format(fields: Iterable[Field]) -> str:
    return "<" + "".join(f"{f.count}{_FORMAT[f.ctype]}" if f.ctype != "__u8" else f"{f.count}s"
                         for f in fields)


def size(fields: Iterable[Field]) -> int:
    return struct.calcsize(_format(fields))


def pack_struct(fields: tuple[Field, ...], values: dict[str, Any]) -> bytes:
    """The struct's bytes. A missing value is zero; an array is a flat sequence of numbers
    (row-major), a byte array is bytes (zero-padded)."""
    flat: list[Any] = []
    for f in fields:
        v = values.get(f.name, b"" if f.ctype == "__u8" else 0)
        if f.ctype == "__u8":
            flat.append(bytes(v))
        elif f.dims:
            v = list(v) if v else []
            flat.extend(v + [0] * (f.count - len(v)))
        else:
            flat.append(v)
    return struct.pack(_format(fields), *flat)


def unpack_struct(fields: tuple[Field, ...], data: bytes) -> dict[str, Any]:
    """The struct's values (arrays as flat tuples)."""
    raw = list(struct.unpack(_format(fields), data[:size(fields)]))
    out: dict[str, Any] = {}
    for f in fields:
        if f.ctype == "__u8" or not f.dims:
            out[f.name] = raw.pop(0)
        else:
            out[f.name] = tuple(raw[:f.count])
            del raw[:f.count]
    return out


# The struct members templates/check.bpf.c.j2 declares (as `layout`).
C_LAYOUT = {
    "request": c_fields(REQUEST, 22),
    "subject": c_fields(SUBJECT, 22),
    "result": c_fields(RESULT, 22),
    "hook_request": c_fields(HOOK_REQUEST, 15),
    "hook_subject": c_fields(HOOK_SUBJECT, 15),
    "hook_result": c_fields(HOOK_RESULT, 14),
}
