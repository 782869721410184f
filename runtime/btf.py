"""A small reader for raw BTF (the kernel's /sys/kernel/btf/vmlinux): which structs
exist and what members they have. Enough for `fpol doctor` to tell fuse-bpf v3
from v4 (v4's struct fuse_ops has `default_filter`)."""

from __future__ import annotations

import struct
from typing import Optional

KIND_STRUCT, KIND_UNION = 4, 5
# Bytes that follow the 12-byte common header, by kind: (fixed, per vlen entry).
_TRAILER = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8),
            14: (4, 0), 15: (0, 12), 17: (4, 0), 19: (0, 12)}


def structs(data: bytes) -> dict[str, list[str]]:
    """struct name -> member names, for every named struct in a raw BTF blob."""
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, _str_len = \
        struct.unpack_from("<HBBIIIII", data, 0)
    if magic != 0xEB9F:
        raise ValueError("not raw BTF")
    types = hdr_len + type_off
    strings = hdr_len + str_off

    def name(off: int) -> str:
        end = data.index(b"\0", strings + off)
        return data[strings + off:end].decode("utf-8", "replace")

    out: dict[str, list[str]] = {}
    pos, end = types, types + type_len
    while pos < end:
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        pos += 12
        fixed, per = _TRAILER.get(kind, (0, 0))
        if kind == KIND_STRUCT and name_off:
            members = [name(struct.unpack_from("<I", data, pos + 12 * i)[0]) for i in range(vlen)]
            out.setdefault(name(name_off), members)
        pos += fixed + per * vlen
    return out


def struct_has_member(path: str, struct_name: str, member: str) -> Optional[bool]:
    """None if the struct is absent (or there is no BTF), else whether it has `member`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    members = structs(data).get(struct_name)
    return None if members is None else member in members
