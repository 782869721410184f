"""Coverage-guided fuzzing of the FUSE wire parsers (runtime/fuse/protocol.py, and the
fuse-bpf filter-request parser in runtime/fuse/fusebpf.py and bpfserver.py).

An input is one request as the daemon reads it from /dev/fuse. Whatever its bytes, parsing
either succeeds with results that stay inside the request, or fails with the parser's own
error (protocol.ProtocolError, fusebpf.FuseBpfError): never another exception (an
IndexError, struct.error or ValueError from deep inside would reach the daemon's
"internal error" path instead of a clean refusal).

- Filter requests (opcode with the pre/postfilter bit): parse_filter_request, then
  split_in_args for the op's in-args and names.
- Ordinary requests: the header, body_of (the in-args without extensions), the op's
  fixed in-struct (the Layout the daemon's handler unpacks) and the NUL-terminated names
  that follow it; FUSE_INIT through parse_init and negotiate; BATCH_FORGET's records.

    python3 fuzz/fuzz_wire.py -max_total_time=120
"""

import struct

import atheris

from common import run

with atheris.instrument_imports(include=["fpol"]):
    from fpol.runtime.fuse import fusebpf as B
    from fpol.runtime.fuse import protocol as P
    from fpol.runtime.fuse.bpfserver import split_in_args

Op = P.Opcode
# What the daemon's handlers (runtime/fuse/server.py) read from each opcode's body: the
# fixed in-struct, then how many NUL-terminated names.
BODIES = {
    Op.LOOKUP: (None, 1), Op.FORGET: (P.FORGET_IN, 0), Op.SETATTR: (P.SETATTR_IN, 0),
    Op.ACCESS: (P.ACCESS_IN, 0), Op.MKNOD: (P.MKNOD_IN, 1), Op.MKDIR: (P.MKDIR_IN, 1),
    Op.SYMLINK: (None, 2), Op.UNLINK: (None, 1), Op.RMDIR: (None, 1),
    Op.RENAME: (P.RENAME_IN, 2), Op.RENAME2: (P.RENAME2_IN, 2), Op.LINK: (P.LINK_IN, 1),
    Op.OPEN: (P.OPEN_IN, 0), Op.OPENDIR: (P.OPEN_IN, 0), Op.CREATE: (P.CREATE_IN, 1),
    Op.READ: (P.READ_IN, 0), Op.READDIR: (P.READ_IN, 0), Op.READDIRPLUS: (P.READ_IN, 0),
    Op.WRITE: (P.WRITE_IN, 0), Op.FLUSH: (P.FLUSH_IN, 0), Op.FSYNC: (P.FSYNC_IN, 0),
    Op.FSYNCDIR: (P.FSYNC_IN, 0), Op.RELEASE: (P.RELEASE_IN, 0),
    Op.RELEASEDIR: (P.RELEASE_IN, 0), Op.FALLOCATE: (P.FALLOCATE_IN, 0),
    Op.LSEEK: (P.LSEEK_IN, 0), Op.GETXATTR: (P.GETXATTR_IN, 1),
    Op.LISTXATTR: (P.GETXATTR_IN, 0), Op.SETXATTR: (P.SETXATTR_IN, 1),
    Op.REMOVEXATTR: (None, 1), Op.INTERRUPT: (P.INTERRUPT_IN, 0),
    Op.COPY_FILE_RANGE: (P.COPY_FILE_RANGE_IN, 0), Op.GETATTR: (P.GETATTR_IN, 0),
}
CLEAN = (P.ProtocolError, B.FuseBpfError)


def _filter(buf: bytes) -> None:
    try:
        f = B.parse_filter_request(buf)
    except CLEAN:
        return
    h = P.IN_HEADER.unpack(buf)
    assert len(f.args) == h.len - P.IN_HEADER.size - h.total_extlen * 8
    assert f.phase in ("pre", "post") and (f.error_in is not None or f.phase == "pre")
    try:
        in_len, names = split_in_args(f.opcode, f.args)
    except CLEAN:
        return
    assert all(b"\0" not in n for n in names)
    assert 0 <= in_len <= len(f.args), (in_len, len(f.args))


def _ordinary(buf: bytes) -> None:
    # The kernel writes at least a header; what the daemon's buffer holds after it is stale.
    buf = buf.ljust(P.IN_HEADER.size, b"\0")
    h = P.IN_HEADER.unpack(buf)
    try:
        body = P.body_of(buf, h)
    except CLEAN:
        return
    assert len(body) <= len(buf) - P.IN_HEADER.size
    try:
        if h.opcode == Op.INIT:
            P.negotiate(P.parse_init(body))
        elif h.opcode == Op.BATCH_FORGET:
            count = P.BATCH_FORGET_IN.unpack(body).count
            for i in range(min(count, 1000)):
                P.FORGET_ONE.unpack(body, P.BATCH_FORGET_IN.size + i * P.FORGET_ONE.size)
        elif h.opcode in BODIES:
            layout, n = BODIES[h.opcode]
            if layout is not None:
                layout.unpack(body)
            names = P.split_names(body[layout.size if layout else 0:], n)
            assert len(names) == n and all(b"\0" not in x for x in names)
    except CLEAN:
        return


def test_one_input(data: bytes) -> None:
    if len(data) >= 8 and B.is_filter(struct.unpack_from("<I", data, 4)[0]):
        _filter(data)
    else:
        _ordinary(data)


def _request(opcode: int, body: bytes, ext: bytes = b"", unique: int = 2, nodeid: int = 1) -> bytes:
    n = P.IN_HEADER.size + len(body) + len(ext)
    return P.IN_HEADER.pack(len=n, opcode=opcode, unique=unique, nodeid=nodeid, uid=0, gid=0,
                            pid=1, total_extlen=len(ext) // 8) + body + ext


def seeds() -> list[bytes]:
    out = [
        _request(Op.INIT, P.INIT_IN.pack(major=7, minor=45, max_readahead=131072,
                                         flags=int(P.InitFlag.INIT_EXT), flags2=1)),
        _request(Op.INIT, P.INIT_IN_COMPAT.pack(major=7, minor=31, max_readahead=4096, flags=0)),
        _request(Op.LOOKUP, b"name\0"),
        _request(Op.MKDIR, P.MKDIR_IN.pack(mode=0o755, umask=0o22) + b"dir\0"),
        _request(Op.CREATE, P.CREATE_IN.pack(flags=0o101, mode=0o644) + b"new\0"),
        _request(Op.RENAME2, P.RENAME2_IN.pack(newdir=1, flags=2) + b"a\0b\0"),
        _request(Op.SYMLINK, b"link\0target\0"),
        _request(Op.SETXATTR, P.SETXATTR_IN.pack(size=3) + b"user.x\0abc"),
        _request(Op.BATCH_FORGET, P.BATCH_FORGET_IN.pack(count=2) +
                 P.FORGET_ONE.pack(nodeid=2, nlookup=1) + P.FORGET_ONE.pack(nodeid=3, nlookup=1)),
        _request(Op.OPEN, P.OPEN_IN.pack(flags=2), ext=P.EXT_HEADER.pack(size=8, type=32)),
        _request(Op.LOOKUP | B.FUSE_PREFILTER, b"name\0"),
        _request(Op.CREATE | B.FUSE_PREFILTER, P.CREATE_IN.pack(flags=1) + b"f\0"),
        _request(Op.OPEN | B.FUSE_POSTFILTER, P.OPEN_IN.pack(flags=0) + P.OPEN_OUT.pack(fh=1),
                 ext=B.error_in_extension(-2)),
        _request(Op.GETXATTR | B.FUSE_POSTFILTER, P.GETXATTR_IN.pack(size=8) + b"user.x\0",
                 ext=B.error_in_extension(0)),
    ]
    return out


if __name__ == "__main__":
    run("wire", test_one_input, seeds)
