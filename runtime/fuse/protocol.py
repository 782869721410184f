"""The FUSE wire format: structures, opcodes, flags, INIT negotiation and reply builders.

Everything that knows a byte layout of <linux/fuse.h> (protocol 7.45, Linux 6.18) lives
here, written from the uapi header's field lists; the rest of the daemon only calls the
builders and parsers below. All structures are little-endian with no implicit padding
(the header pads every structure to 8 bytes by hand), so `struct` formats start with `<`.
"""

from __future__ import annotations

import enum
import os
import struct
from collections import namedtuple
from dataclasses import dataclass
from typing import Any
from fpol.compiler.errors import EnvironmentProblem

KERNEL_MAJOR = 7
OUR_MINOR = 45  # the newest minor this daemon was written against (FUSE_COPY_FILE_RANGE_64)
ROOT_ID = 1


class Layout:
    """One fixed-size structure: field names, a struct format, and pack/unpack by name."""

    def __init__(self, name: str, fields: str):
        pairs = [f.split(":") for f in fields.split()]
        self.name = name
        self.names = tuple(n for n, _ in pairs if n != "_")
        self.struct = struct.Struct("<" + "".join(fmt for _, fmt in pairs))
        self.size = self.struct.size
        # Made at run time, which mypy does not model (it wants NamedTuple classes).
        self.tuple: Any = namedtuple(name, self.names)  # type: ignore[misc]
        # Pad fields (`_`) are written as zero bytes by the `x` format and never named.

    def pack(self, **values: int) -> bytes:
        unknown = set(values) - set(self.names)
        if unknown:
            raise TypeError(f"{self.name} has no field {sorted(unknown)}")
        return self.struct.pack(*(values.get(n, 0) for n in self.names))

    def unpack(self, buf, offset: int = 0):
        if offset < 0 or len(buf) - offset < self.size:
            raise ProtocolError(f"{self.name} needs {self.size} bytes, the request has "
                                f"{max(len(buf) - offset, 0)}")
        return self.tuple._make(self.struct.unpack_from(buf, offset))


# --- structures (field:format, `_:Nx` is padding) --------------------------------------

IN_HEADER = Layout("fuse_in_header", "len:I opcode:I unique:Q nodeid:Q uid:I gid:I pid:I "
                                     "total_extlen:H padding:H")
OUT_HEADER = Layout("fuse_out_header", "len:I error:i unique:Q")
ATTR_FIELDS = ("ino:Q size:Q blocks:Q atime:Q mtime:Q ctime:Q atimensec:I mtimensec:I "
               "ctimensec:I mode:I nlink:I uid:I gid:I rdev:I blksize:I flags:I")
ATTR = Layout("fuse_attr", ATTR_FIELDS)
ENTRY_OUT = Layout("fuse_entry_out", "nodeid:Q generation:Q entry_valid:Q attr_valid:Q "
                                     "entry_valid_nsec:I attr_valid_nsec:I " + ATTR_FIELDS)
ATTR_OUT = Layout("fuse_attr_out", "attr_valid:Q attr_valid_nsec:I dummy:I " + ATTR_FIELDS)
INIT_IN = Layout("fuse_init_in", "major:I minor:I max_readahead:I flags:I flags2:I _:44x")
INIT_IN_COMPAT = Layout("fuse_init_in_7_35", "major:I minor:I max_readahead:I flags:I")
INIT_OUT = Layout("fuse_init_out", "major:I minor:I max_readahead:I flags:I max_background:H "
                                   "congestion_threshold:H max_write:I time_gran:I max_pages:H "
                                   "map_alignment:H flags2:I max_stack_depth:I "
                                   "request_timeout:H _:22x")
FORGET_IN = Layout("fuse_forget_in", "nlookup:Q")
FORGET_ONE = Layout("fuse_forget_one", "nodeid:Q nlookup:Q")
BATCH_FORGET_IN = Layout("fuse_batch_forget_in", "count:I dummy:I")
GETATTR_IN = Layout("fuse_getattr_in", "getattr_flags:I dummy:I fh:Q")
SETATTR_IN = Layout("fuse_setattr_in", "valid:I padding:I fh:Q size:Q lock_owner:Q atime:Q "
                                       "mtime:Q ctime:Q atimensec:I mtimensec:I ctimensec:I "
                                       "mode:I unused4:I uid:I gid:I unused5:I")
MKNOD_IN = Layout("fuse_mknod_in", "mode:I rdev:I umask:I padding:I")
MKDIR_IN = Layout("fuse_mkdir_in", "mode:I umask:I")
RENAME_IN = Layout("fuse_rename_in", "newdir:Q")
RENAME2_IN = Layout("fuse_rename2_in", "newdir:Q flags:I padding:I")
LINK_IN = Layout("fuse_link_in", "oldnodeid:Q")
OPEN_IN = Layout("fuse_open_in", "flags:I open_flags:I")
CREATE_IN = Layout("fuse_create_in", "flags:I mode:I umask:I open_flags:I")
OPEN_OUT = Layout("fuse_open_out", "fh:Q open_flags:I backing_id:i")
RELEASE_IN = Layout("fuse_release_in", "fh:Q flags:I release_flags:I lock_owner:Q")
FLUSH_IN = Layout("fuse_flush_in", "fh:Q unused:I padding:I lock_owner:Q")
READ_IN = Layout("fuse_read_in", "fh:Q offset:Q size:I read_flags:I lock_owner:Q flags:I "
                                 "padding:I")
WRITE_IN = Layout("fuse_write_in", "fh:Q offset:Q size:I write_flags:I lock_owner:Q flags:I "
                                   "padding:I")
WRITE_OUT = Layout("fuse_write_out", "size:I padding:I")
STATFS_OUT = Layout("fuse_kstatfs", "blocks:Q bfree:Q bavail:Q files:Q ffree:Q bsize:I "
                                    "namelen:I frsize:I padding:I _:24x")
FSYNC_IN = Layout("fuse_fsync_in", "fh:Q fsync_flags:I padding:I")
# Without FUSE_SETXATTR_EXT (which we never request) the kernel sends the 8-byte form.
SETXATTR_IN = Layout("fuse_setxattr_in_compat", "size:I flags:I")
GETXATTR_IN = Layout("fuse_getxattr_in", "size:I padding:I")
GETXATTR_OUT = Layout("fuse_getxattr_out", "size:I padding:I")
ACCESS_IN = Layout("fuse_access_in", "mask:I padding:I")
INTERRUPT_IN = Layout("fuse_interrupt_in", "unique:Q")
FALLOCATE_IN = Layout("fuse_fallocate_in", "fh:Q offset:Q length:Q mode:I padding:I")
LSEEK_IN = Layout("fuse_lseek_in", "fh:Q offset:Q whence:I padding:I")
LSEEK_OUT = Layout("fuse_lseek_out", "offset:Q")
COPY_FILE_RANGE_IN = Layout("fuse_copy_file_range_in", "fh_in:Q off_in:Q nodeid_out:Q fh_out:Q "
                                                       "off_out:Q len:Q flags:Q")
COPY_FILE_RANGE_OUT = Layout("fuse_copy_file_range_out", "bytes_copied:Q")
DIRENT = Layout("fuse_dirent", "ino:Q off:Q namelen:I type:I")
BACKING_MAP = Layout("fuse_backing_map", "fd:i flags:I padding:Q")
EXT_HEADER = Layout("fuse_ext_header", "size:I type:I")


class Opcode(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52
    COPY_FILE_RANGE_64 = 53


# Requests the kernel sends without waiting for (or accepting) a reply.
NO_REPLY_OPCODES = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT})


class InitFlag(enum.IntFlag):
    """INIT flags as one 64-bit set; bits 32..63 travel in flags2 (with FUSE_INIT_EXT)."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    FLOCK_LOCKS = 1 << 10
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    PARALLEL_DIROPS = 1 << 18
    POSIX_ACL = 1 << 20
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    HANDLE_KILLPRIV_V2 = 1 << 28
    SETXATTR_EXT = 1 << 29
    INIT_EXT = 1 << 30
    DIRECT_IO_ALLOW_MMAP = 1 << 36
    PASSTHROUGH = 1 << 37


# fuse_setattr_in.valid
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FATTR_ATIME, FATTR_MTIME, FATTR_FH = 1 << 4, 1 << 5, 1 << 6
FATTR_ATIME_NOW, FATTR_MTIME_NOW, FATTR_LOCKOWNER, FATTR_CTIME = 1 << 7, 1 << 8, 1 << 9, 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# With HANDLE_KILLPRIV_V2 the daemon clears set-id bits and capabilities when told to.
FUSE_WRITE_KILL_SUIDGID = 1 << 2  # fuse_write_in.write_flags
FUSE_OPEN_KILL_SUIDGID = 1 << 0  # fuse_open_in.open_flags / fuse_create_in.open_flags

# fuse_open_out.open_flags
FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_NONSEEKABLE = 1 << 0, 1 << 1, 1 << 2
FOPEN_CACHE_DIR = 1 << 3  # the kernel may keep this directory's listing (5.1+)
FOPEN_NOFLUSH = 1 << 5  # the kernel sends no FLUSH at close (5.12+)
FOPEN_PASSTHROUGH = 1 << 7

FUSE_GETATTR_FH = 1 << 0
FUSE_FSYNC_FDATASYNC = 1 << 0

# rename2 flags (renameat2(2))
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1 << 0, 1 << 1, 1 << 2

# Device ioctls: _IOW(229, nr, type) = 0x40000000 | sizeof(type) << 16 | 229 << 8 | nr.
FUSE_DEV_IOC_MAGIC = 229


def _iow(nr: int, size: int) -> int:
    return 0x40000000 | (size << 16) | (FUSE_DEV_IOC_MAGIC << 8) | nr


def _ior(nr: int, size: int) -> int:
    return 0x80000000 | (size << 16) | (FUSE_DEV_IOC_MAGIC << 8) | nr


FUSE_DEV_IOC_CLONE = _ior(0, 4)  # 0x8004E500: this descriptor serves the other's connection
FUSE_DEV_IOC_BACKING_OPEN = _iow(1, BACKING_MAP.size)  # 0x4010E501
FUSE_DEV_IOC_BACKING_CLOSE = _iow(2, 4)  # 0x4004E502

# A reply's error must be 0 or a negative errno above -512 (ERESTARTSYS and up are kernel-only).
MAX_ERRNO = 511


# --- parsing requests -----------------------------------------------------------------

def split_names(buf, count: int) -> list[bytes]:
    """`count` NUL-terminated names from the start of buf (the way names follow in-args)."""
    out: list[bytes] = []
    pos = 0
    data = bytes(buf)
    for _ in range(count):
        end = data.find(b"\0", pos)
        if end < 0:
            raise ProtocolError(f"name {len(out) + 1} of {count} has no terminating NUL")
        out.append(data[pos:end])
        pos = end + 1
    return out


def body_of(buf, header) -> memoryview:
    """The in-args of a request: everything after the header, minus any extensions."""
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    end = header.len - header.total_extlen * 8
    if header.len > len(view) or end < IN_HEADER.size:
        raise ProtocolError(f"request of {header.len} bytes with {header.total_extlen * 8} "
                            f"bytes of extensions does not fit its {IN_HEADER.size}-byte header")
    return view[IN_HEADER.size:end]


# --- INIT -------------------------------------------------------------------------------

@dataclass(frozen=True)
class InitRequest:
    major: int
    minor: int
    max_readahead: int
    flags: int  # 64-bit: flags | flags2 << 32


def parse_init(body) -> InitRequest:
    base = INIT_IN_COMPAT.unpack(body)
    flags = base.flags
    if flags & InitFlag.INIT_EXT and len(body) >= INIT_IN.size:
        flags |= INIT_IN.unpack(body).flags2 << 32
    return InitRequest(base.major, base.minor, base.max_readahead, flags)


# What we ask for when the kernel offers it. Deliberately absent: WRITEBACK_CACHE (the kernel
# would own size/mtime, and it excludes passthrough), POSIX_LOCKS/FLOCK_LOCKS (the kernel keeps
# locks locally), DONT_MASK (the kernel applies the umask, the daemon runs with umask 0),
# CACHE_SYMLINKS (every readlink must reach the policy), EXPORT_SUPPORT, SETXATTR_EXT.
# HANDLE_KILLPRIV_V2 makes the kernel mark the superblock SB_NOSEC; without it every write
# (passthrough ones too) first asks the daemon for security.capability (a GETXATTR).
WANTED = (InitFlag.ASYNC_READ | InitFlag.ATOMIC_O_TRUNC | InitFlag.BIG_WRITES
          | InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO | InitFlag.MAX_PAGES
          | InitFlag.PARALLEL_DIROPS | InitFlag.HANDLE_KILLPRIV_V2 | InitFlag.INIT_EXT
          | InitFlag.DIRECT_IO_ALLOW_MMAP)

PAGE_SIZE = 4096
MAX_PAGES = 256  # 1 MiB per request
MAX_WRITE = MAX_PAGES * PAGE_SIZE


@dataclass(frozen=True)
class Negotiated:
    major: int
    minor: int
    flags: int
    passthrough: bool
    note: str  # why passthrough is on or off, in words
    reply: bytes  # the fuse_init_out payload
    retry: bool = False  # the kernel spoke a newer major: it will send INIT again

    @property
    def readdirplus(self) -> bool:
        return bool(self.flags & InitFlag.DO_READDIRPLUS)


def negotiate(req: InitRequest, want_passthrough: bool = True,
              max_write: int = MAX_WRITE) -> Negotiated:
    """Our INIT reply for the kernel's offer (fuse.h "Version negotiation")."""
    if req.major > KERNEL_MAJOR:
        # Reply with our major only; the kernel retries with 7.x.
        return Negotiated(KERNEL_MAJOR, OUR_MINOR, 0, False, "kernel speaks a newer major",
                          INIT_OUT.pack(major=KERNEL_MAJOR, minor=OUR_MINOR), retry=True)
    if req.major < KERNEL_MAJOR:
        raise ProtocolError(f"kernel FUSE protocol {req.major}.{req.minor} is too old (need 7.x)")
    minor = min(req.minor, OUR_MINOR)
    offered = req.flags if req.flags & InitFlag.INIT_EXT else req.flags & 0xFFFFFFFF
    flags = int(WANTED) & offered
    if not want_passthrough:
        note = "off (disabled by the daemon's caller): reads and writes are served by the daemon"
    elif minor < 40:
        note = (f"not available: kernel FUSE protocol 7.{req.minor} predates passthrough "
                "(7.40, Linux 6.9): reads and writes are served by the daemon")
    elif not offered & InitFlag.PASSTHROUGH:
        note = ("not offered by this kernel (CONFIG_FUSE_PASSTHROUGH off?): reads and writes "
                "are served by the daemon")
    else:
        flags |= InitFlag.PASSTHROUGH
        note = "on: allowed opens of regular files are handed to the kernel (FOPEN_PASSTHROUGH)"
    passthrough = bool(flags & InitFlag.PASSTHROUGH)
    reply = INIT_OUT.pack(
        major=KERNEL_MAJOR, minor=minor, max_readahead=req.max_readahead,
        flags=flags & 0xFFFFFFFF, max_background=16, congestion_threshold=12,
        max_write=max_write, time_gran=1,
        max_pages=MAX_PAGES if flags & InitFlag.MAX_PAGES else 0,
        flags2=flags >> 32,
        # Stacking depth of the backing files: 1 = directly on a disk filesystem (ext4,
        # xfs, tmpfs); BACKING_OPEN fails with ELOOP on stacked backings (overlayfs).
        max_stack_depth=1 if passthrough else 0)
    return Negotiated(KERNEL_MAJOR, minor, flags, passthrough, note, reply)


class ProtocolError(EnvironmentProblem):
    """The kernel sent something this daemon cannot speak (or a request that is malformed:
    too short for its structure, a name without its NUL, extensions past its end)."""


# --- notifications (unsolicited messages to the kernel: unique 0, error = the code) -----

class Notify(enum.IntEnum):
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    INC_EPOCH = 8  # 7.44: every dentry of the connection must be looked up again


NOTIFY_INVAL_INODE_OUT = Layout("fuse_notify_inval_inode_out", "ino:Q off:q len:q")
NOTIFY_INVAL_ENTRY_OUT = Layout("fuse_notify_inval_entry_out", "parent:Q namelen:I flags:I")
INC_EPOCH_MINOR = 44


def notification(code: int, payload: bytes = b"") -> bytes:
    return OUT_HEADER.pack(len=OUT_HEADER.size + len(payload), error=code, unique=0) + payload


def inval_attributes(nodeid: int) -> bytes:
    """Forget the cached attributes of a node (off < 0: its page cache is left alone, and
    the kernel takes no lock the daemon could be waiting on)."""
    return notification(Notify.INVAL_INODE, NOTIFY_INVAL_INODE_OUT.pack(ino=nodeid, off=-1, len=0))


def inval_entry(parent: int, name: bytes) -> bytes:
    """Forget a cached name. The kernel locks the parent directory for it, so this must
    never be sent while a request that holds that lock waits on the sender."""
    return notification(Notify.INVAL_ENTRY, NOTIFY_INVAL_ENTRY_OUT.pack(
        parent=parent, namelen=len(name), flags=0) + name + b"\0")


def inc_epoch() -> bytes:
    return notification(Notify.INC_EPOCH)


# --- replies ---------------------------------------------------------------------------

# Every reply and every directory entry is packed with these directly: the keyword
# Layout.pack checks field names, which the hot paths need not pay for.
_OUT_HEADER = OUT_HEADER.struct
_DIRENT = DIRENT.struct


def reply(unique: int, payload: bytes = b"") -> bytes:
    return _OUT_HEADER.pack(_OUT_HEADER.size + len(payload), 0, unique) + payload


def reply_error(unique: int, errno: int) -> bytes:
    if not 0 < errno <= MAX_ERRNO:
        raise ValueError(f"errno {errno} out of range for a FUSE reply")
    return OUT_HEADER.pack(len=OUT_HEADER.size, error=-errno, unique=unique)


def attr_values(st) -> tuple:
    """fuse_attr field values, in order, from an os.stat_result (the hot path: no dicts)."""
    a, m, c = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
    return (st.st_ino, st.st_size, st.st_blocks, a // 10**9, m // 10**9, c // 10**9,
            a % 10**9, m % 10**9, c % 10**9, st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
            _encode_dev(st.st_rdev) if st.st_rdev else 0, st.st_blksize, 0)


def attr_fields(st) -> dict:
    """fuse_attr fields by name (nanosecond times split as the kernel wants)."""
    return dict(zip(ATTR.names, attr_values(st)))


def _encode_dev(rdev: int) -> int:
    """The kernel's new_encode_dev(): fuse_attr.rdev and fuse_mknod_in.rdev are 32 bits."""
    major, minor = os.major(rdev), os.minor(rdev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def decode_dev(rdev: int) -> int:
    """new_decode_dev(): a 32-bit FUSE device number -> this libc's dev_t."""
    return os.makedev((rdev & 0xFFF00) >> 8, (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00))


def entry_out(nodeid: int, st, generation: int = 0, entry_valid: float = 0.0,
              attr_valid: float = 0.0) -> bytes:
    """fuse_entry_out. Timeouts default to 0: the backing tree is authoritative."""
    return ENTRY_OUT.struct.pack(nodeid, generation, int(entry_valid), int(attr_valid),
                                 _nsec(entry_valid), _nsec(attr_valid), *attr_values(st))


def attr_out(st, attr_valid: float = 0.0) -> bytes:
    return ATTR_OUT.struct.pack(int(attr_valid), _nsec(attr_valid), 0, *attr_values(st))


def _nsec(seconds: float) -> int:
    return int(round((seconds - int(seconds)) * 1e9)) if seconds else 0


def open_out(fh: int, open_flags: int, backing_id: int = 0) -> bytes:
    return OPEN_OUT.pack(fh=fh, open_flags=open_flags, backing_id=backing_id)


def statfs_out(sv) -> bytes:
    """fuse_kstatfs from an os.statvfs_result."""
    return STATFS_OUT.pack(blocks=sv.f_blocks, bfree=sv.f_bfree, bavail=sv.f_bavail,
                           files=sv.f_files, ffree=sv.f_ffree, bsize=sv.f_bsize,
                           namelen=sv.f_namemax, frsize=sv.f_frsize)


def _align8(n: int) -> int:
    return (n + 7) & ~7


def dirent(ino: int, off: int, name: bytes, dtype: int) -> bytes:
    """One fuse_dirent record, padded to 8 bytes (FUSE_DIRENT_SIZE)."""
    rec = _DIRENT.pack(ino, off, len(name), dtype) + name
    return rec + b"\0" * (-len(rec) % 8)


def direntplus(entry: bytes, ino: int, off: int, name: bytes, dtype: int) -> bytes:
    """fuse_direntplus: a fuse_entry_out followed by the dirent (FUSE_DIRENTPLUS_SIZE)."""
    return entry + dirent(ino, off, name, dtype)


def dirent_size(name: bytes, plus: bool = False) -> int:
    return _align8(DIRENT.size + len(name)) + (ENTRY_OUT.size if plus else 0)


def write_out(size: int) -> bytes:
    return WRITE_OUT.pack(size=size)


def backing_map(fd: int) -> bytes:
    return BACKING_MAP.pack(fd=fd, flags=0, padding=0)
