"""The decision word: one 32-bit value per decision, shared by the generated C (both
objects), the compiler that writes it and the kernel engine that reads it back.

    bits 0-1   kind: 0 allow, 1 deny, 2 userspace
    bits 2-3   userspace mode: 0 instead, 1 before, 2 after
    bit  4     audit
    bit  5     complained (a deny that complain mode turned into allow + audit)
    bit  6     realised (decided by the fuse-bpf realisation, not a rule: see realisation.md)
    bits 8-15  errno of a deny
    bits 16-31 deciding rule + 1 (0: the default)

templates/logic.h.j2 takes its FPOL_* macros from `C_MACROS` below, so the C and the
Python cannot drift apart.
"""

from __future__ import annotations

import errno as errno_module
from typing import Optional

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
