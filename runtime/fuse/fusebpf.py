"""The daemon's side of fuse-bpf (spec/fuse-bpf-abi.md §2.3, §3, §8, §9).

What a daemon needs on a fuse-bpf kernel: the mount options that attach the root class's
program and backing directory, lookup replies that give a child a backing file and a
program (fuse_entry_out followed by fuse_bpf_entry_out records, which must be sent with
the FUSE_DEV_IOC_BPF_RESPONSE ioctl, never write()), and the wire format of the filter
requests the kernel sends when a program returns a USER_* code.

None of this can run on this machine: its kernel has no fuse-bpf (the RFC is not in
mainline). The code follows the spec and is tested byte for byte against the layouts the
spec gives (tests/test_fuse_protocol.py); nothing here has met a fuse-bpf kernel.
"""

from __future__ import annotations

import enum
import fcntl
import re
import struct
from dataclasses import dataclass
from typing import Optional, Sequence

from . import protocol as P
from fpol.compiler.errors import UsageProblem

# §2.1: opcode phase bits of filter requests.
FUSE_OPCODE_FILTER = 0x0FFFF
FUSE_PREFILTER = 0x10000
FUSE_POSTFILTER = 0x20000

# §2.3
FUSE_BPF_MAX_ENTRIES = 2
BPF_FUSE_NAME_MAX = 15  # bytes of the name field in struct fuse_ops, NUL included
FUSE_ERROR_IN = 33  # enum fuse_ext_type, after FUSE_MAX_NR_SECCTX 31 and FUSE_EXT_GROUPS 32
PAGE_SIZE = 4096


class EntryType(enum.IntEnum):
    """enum fuse_bpf_type (0 terminates the entry list)."""

    BACKING = 1
    BPF = 2
    REMOVE_BACKING = 3
    REMOVE_BPF = 4


# §3: struct fuse_bpf_entry_out, 24 bytes: entry_type u32 @0, unused u32 @4 (must be 0),
# then a 16-byte union @8: {unused2 u64 @8, fd u64 @16} or name char[16] @8.
ENTRY_HEAD = struct.Struct("<II")
ENTRY_FD = struct.Struct("<IIQQ")
ENTRY_NAME = struct.Struct("<II16s")
ENTRY_SIZE = 24
assert ENTRY_FD.size == ENTRY_NAME.size == ENTRY_SIZE

# §8: program names follow the BPF object-name rules.
_NAME = re.compile(r"[A-Za-z0-9_.]{1,14}")


class FuseBpfError(UsageProblem, ValueError):
    """A reply or option the fuse-bpf kernel would reject."""


def check_program_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise FuseBpfError(f"fuse_ops instance name `{name}`: 1..14 characters of "
                           "[A-Za-z0-9_.] (the kernel copies it with the BPF object-name rules)")
    return name


# --- mount options (§8) -------------------------------------------------------------------

def mount_options(root_dir_fd: int, root_bpf: str, dev_fd: Optional[int] = None,
                  no_daemon: bool = False, uid: int = 0, gid: int = 0,
                  shared: bool = False) -> str:
    """`fd=N,rootmode=40000,user_id=0,group_id=0,root_dir=FD,root_bpf=NAME[,no_daemon]`,
    plus `allow_other,default_permissions` for a mount every user may use (the kernel
    checks the backing tree's ownership and modes first, the programs decide on top).

    With no_daemon the kernel never sends INIT and ignores fd=, so it may be left out;
    without it fd= is mandatory."""
    check_program_name(root_bpf)
    if dev_fd is None and not no_daemon:
        raise FuseBpfError("fd= (the /dev/fuse descriptor) is required unless no_daemon")
    parts = [] if dev_fd is None else [f"fd={dev_fd}"]
    parts += ["rootmode=40000", f"user_id={uid}", f"group_id={gid}",
              f"root_dir={root_dir_fd}", f"root_bpf={root_bpf}"]
    if no_daemon:
        parts.append("no_daemon")
    if shared:
        parts.append("allow_other,default_permissions")
    return ",".join(parts)


# --- lookup replies with entries (§3, §8) --------------------------------------------------

@dataclass(frozen=True)
class Entry:
    type: EntryType
    fd: int = 0  # BACKING: a descriptor in the daemon's own table
    name: str = ""  # BPF: the fuse_ops instance (class) to attach

    def pack(self) -> bytes:
        if self.type == EntryType.BACKING:
            if self.fd < 0:
                raise FuseBpfError("backing entry needs a descriptor")
            return ENTRY_FD.pack(self.type, 0, 0, self.fd)
        if self.type == EntryType.BPF:
            raw = check_program_name(self.name).encode("ascii")
            return ENTRY_NAME.pack(self.type, 0, raw)  # NUL-padded to 16: terminated
        return ENTRY_FD.pack(self.type, 0, 0, 0)


def backing(fd: int) -> Entry:
    return Entry(EntryType.BACKING, fd=fd)


def program(name: str) -> Entry:
    return Entry(EntryType.BPF, name=name)


def check_entries(entries: Sequence[Entry]) -> None:
    """The kernel's rules for daemon lookup replies (§8)."""
    if len(entries) > FUSE_BPF_MAX_ENTRIES:
        raise FuseBpfError(f"at most {FUSE_BPF_MAX_ENTRIES} entries")
    backing_actions = [e for e in entries
                       if e.type in (EntryType.BACKING, EntryType.REMOVE_BACKING)]
    bpf_actions = [e for e in entries if e.type in (EntryType.BPF, EntryType.REMOVE_BPF)]
    if len(backing_actions) > 1 or len(bpf_actions) > 1:
        raise FuseBpfError("at most one backing action and one bpf action")
    if entries and not any(e.type == EntryType.BACKING for e in entries):
        raise FuseBpfError("a reply with entries must carry a BACKING entry (else -EINVAL)")


def lookup_reply(unique: int, entry_out: bytes, entries: Sequence[Entry]) -> bytes:
    """fuse_out_header + fuse_entry_out (128 bytes) + up to 2 fuse_bpf_entry_out (24 each)."""
    if len(entry_out) != P.ENTRY_OUT.size:
        raise FuseBpfError(f"fuse_entry_out is {P.ENTRY_OUT.size} bytes, got {len(entry_out)}")
    check_entries(entries)
    payload = entry_out + b"".join(e.pack() for e in entries)
    reply = P.reply(unique, payload)
    if len(reply) > PAGE_SIZE:
        raise FuseBpfError("BPF response longer than a page")
    return reply


def bpf_response_ioctl(length: int) -> int:
    """FUSE_DEV_IOC_BPF_RESPONSE(N) = _IOW(229, 125, char[N]) = 0x40000000 | N<<16 | 0xE57D."""
    if not 0 < length <= PAGE_SIZE:
        raise FuseBpfError("BPF response length must be 1..PAGE_SIZE")
    return 0x40000000 | (length << 16) | (P.FUSE_DEV_IOC_MAGIC << 8) | 125


def send_bpf_response(dev_fd: int, reply: bytes) -> None:
    """Deliver a reply that carries entries (a write() of it fails with EINVAL)."""
    fcntl.ioctl(dev_fd, bpf_response_ioctl(len(reply)), bytes(reply))


# --- filter requests (§9) ----------------------------------------------------------------

@dataclass(frozen=True)
class FilterRequest:
    unique: int
    nodeid: int
    opcode: int  # the base opcode (P.Opcode value)
    phase: str  # "pre" | "post"
    args: bytes  # in-args (pre) / in-args then out-args (post), as the kernel laid them out
    error_in: Optional[int]  # post only: the backing op's result (0 or a negative errno)
    uid: int = 0
    gid: int = 0
    pid: int = 0


def is_filter(opcode: int) -> bool:
    return bool(opcode & (FUSE_PREFILTER | FUSE_POSTFILTER))


def parse_filter_request(buf: bytes) -> FilterRequest:
    """A daemon filter request: header opcode = base | 0x10000 (pre) or | 0x20000 (post);
    a postfilter request ends with the error_in extension {size 16, type 33, u32, pad}."""
    if len(buf) < P.IN_HEADER.size:
        raise FuseBpfError(f"{len(buf)} bytes: shorter than a request header")
    h = P.IN_HEADER.unpack(buf)
    if h.len != len(buf):
        raise FuseBpfError(f"header says {h.len} bytes, got {len(buf)}")
    if h.opcode & FUSE_PREFILTER and h.opcode & FUSE_POSTFILTER:
        raise FuseBpfError("both filter phase bits set")
    if not is_filter(h.opcode):
        raise FuseBpfError(f"opcode {h.opcode:#x} is not a filter request")
    phase = "pre" if h.opcode & FUSE_PREFILTER else "post"
    ext_start = h.len - h.total_extlen * 8
    if ext_start < P.IN_HEADER.size:
        raise FuseBpfError("extensions overlap the header")
    args = bytes(buf[P.IN_HEADER.size:ext_start])
    error_in = None
    pos = ext_start
    while pos < h.len:
        ext = P.EXT_HEADER.unpack(buf, pos)
        if ext.size < P.EXT_HEADER.size or pos + ext.size > h.len:
            raise FuseBpfError("malformed extension record")
        if ext.type == FUSE_ERROR_IN:
            if ext.size < P.EXT_HEADER.size + 4:
                raise FuseBpfError(f"error_in extension of {ext.size} bytes has no error")
            (error_in,) = struct.unpack_from("<i", buf, pos + P.EXT_HEADER.size)
        pos += ext.size
    if phase == "post" and error_in is None:
        raise FuseBpfError("postfilter request without the error_in extension")
    return FilterRequest(h.unique, h.nodeid, h.opcode & FUSE_OPCODE_FILTER, phase, args,
                         error_in, h.uid, h.gid, h.pid)


def error_in_extension(error_in: int) -> bytes:
    """fuse_ext_header {size 16, type FUSE_ERROR_IN} + error_in (u32 of a negative errno) + pad."""
    return P.EXT_HEADER.pack(size=16, type=FUSE_ERROR_IN) + struct.pack("<iI", error_in, 0)


def filter_reply(unique: int, error: int = 0, payload: bytes = b"") -> bytes:
    """The reply to a filter request: error in (-512, 0]; a prefilter echoes its in-args
    (edited or not), a postfilter returns its out-args."""
    if not -P.MAX_ERRNO <= error <= 0:
        raise FuseBpfError("filter reply error must be 0 or a negative errno above -512")
    if error:
        return P.OUT_HEADER.pack(len=P.OUT_HEADER.size, error=error, unique=unique)
    return P.reply(unique, payload)
