"""Byte layouts of the FUSE wire format and of the fuse-bpf additions, checked against the
field lists of <linux/fuse.h> (7.45) and spec/fuse-bpf-abi.md §2.3, §3, §8, §9.

Expected bytes are built here independently (explicit offsets, not the module's Layouts).
"""

from __future__ import annotations

import errno
import os
import struct

import pytest

from fpol.runtime.fuse import fusebpf as B
from fpol.runtime.fuse import protocol as P
from fpol.runtime.registry import unescape as _unescape

# --- structure sizes ------------------------------------------------------------------------

SIZES = {
    "IN_HEADER": 40, "OUT_HEADER": 16, "ATTR": 88, "ENTRY_OUT": 128, "ATTR_OUT": 104,
    "INIT_IN": 64, "INIT_IN_COMPAT": 16, "INIT_OUT": 64, "FORGET_IN": 8, "FORGET_ONE": 16,
    "BATCH_FORGET_IN": 8, "GETATTR_IN": 16, "SETATTR_IN": 88, "MKNOD_IN": 16, "MKDIR_IN": 8,
    "RENAME_IN": 8, "RENAME2_IN": 16, "LINK_IN": 8, "OPEN_IN": 8, "CREATE_IN": 16,
    "OPEN_OUT": 16, "RELEASE_IN": 24, "FLUSH_IN": 24, "READ_IN": 40, "WRITE_IN": 40,
    "WRITE_OUT": 8, "STATFS_OUT": 80, "FSYNC_IN": 16, "SETXATTR_IN": 8, "GETXATTR_IN": 8,
    "GETXATTR_OUT": 8, "ACCESS_IN": 8, "INTERRUPT_IN": 8, "FALLOCATE_IN": 32, "LSEEK_IN": 24,
    "LSEEK_OUT": 8, "COPY_FILE_RANGE_IN": 56, "COPY_FILE_RANGE_OUT": 8, "DIRENT": 24,
    "BACKING_MAP": 16, "EXT_HEADER": 8,
}


@pytest.mark.parametrize("name,size", sorted(SIZES.items()))
def test_struct_sizes(name, size):
    assert getattr(P, name).size == size


def test_opcodes_match_the_header():
    assert (P.Opcode.LOOKUP, P.Opcode.FORGET, P.Opcode.MKNOD, P.Opcode.RELEASE,
            P.Opcode.FSYNC, P.Opcode.INIT, P.Opcode.CREATE, P.Opcode.BATCH_FORGET,
            P.Opcode.READDIRPLUS, P.Opcode.RENAME2, P.Opcode.COPY_FILE_RANGE,
            P.Opcode.COPY_FILE_RANGE_64) == (1, 2, 8, 18, 20, 26, 35, 42, 44, 45, 47, 53)
    assert 7 not in {int(o) for o in P.Opcode} and 19 not in {int(o) for o in P.Opcode}
    assert P.NO_REPLY_OPCODES == {P.Opcode.FORGET, P.Opcode.BATCH_FORGET, P.Opcode.INTERRUPT}


def test_ioctl_numbers():
    assert P.FUSE_DEV_IOC_BACKING_OPEN == 0x4010E501
    assert P.FUSE_DEV_IOC_BACKING_CLOSE == 0x4004E502
    assert P.backing_map(7) == struct.pack("<iIQ", 7, 0, 0)


def test_layout_rejects_unknown_fields():
    with pytest.raises(TypeError):
        P.OPEN_OUT.pack(fh=1, nope=2)


# --- headers and replies -------------------------------------------------------------------

def test_in_header_fields():
    raw = struct.pack("<IIQQIIIHH", 80, 1, 0xABCDEF, 5, 1000, 100, 4242, 2, 0)
    h = P.IN_HEADER.unpack(raw)
    assert (h.len, h.opcode, h.unique, h.nodeid, h.uid, h.gid, h.pid, h.total_extlen) == \
        (80, 1, 0xABCDEF, 5, 1000, 100, 4242, 2)


def test_body_strips_extensions():
    header = struct.pack("<IIQQIIIHH", 40 + 8 + 16, 1, 9, 1, 0, 0, 0, 2, 0)
    buf = header + b"name\0\0\0\0" + bytes(16)
    h = P.IN_HEADER.unpack(buf)
    assert bytes(P.body_of(buf, h)) == b"name\0\0\0\0"


def test_reply_and_error_bytes():
    assert P.reply(77, b"xy") == struct.pack("<IiQ", 18, 0, 77) + b"xy"
    assert P.reply_error(77, errno.EPERM) == struct.pack("<IiQ", 16, -1, 77)
    with pytest.raises(ValueError):
        P.reply_error(1, 512)
    with pytest.raises(ValueError):
        P.reply_error(1, 0)


def _stat(**kw):
    base = dict(st_mode=0o100644, st_ino=1234, st_dev=1, st_nlink=2, st_uid=10, st_gid=20,
                st_size=4096, st_atime=0, st_mtime=0, st_ctime=0)
    base.update(kw)
    fields = [base["st_mode"], base["st_ino"], base["st_dev"], base["st_nlink"],
              base["st_uid"], base["st_gid"], base["st_size"], base["st_atime"],
              base["st_mtime"], base["st_ctime"]]
    extra = {"st_atime_ns": 1_700_000_000_123_456_789, "st_mtime_ns": 1_700_000_001_000_000_001,
             "st_ctime_ns": 1_700_000_002_999_999_999, "st_blocks": 8, "st_blksize": 4096,
             "st_rdev": base.get("st_rdev", 0)}
    return os.stat_result(tuple(fields), extra)


def test_entry_out_layout():
    st = _stat()
    raw = P.entry_out(42, st, generation=3, entry_valid=1.5, attr_valid=0.25)
    assert len(raw) == 128
    assert struct.unpack_from("<QQQQII", raw, 0) == (42, 3, 1, 0, 500_000_000, 250_000_000)
    # fuse_attr at offset 40
    ino, size, blocks, atime, mtime, ctime = struct.unpack_from("<6Q", raw, 40)
    assert (ino, size, blocks) == (1234, 4096, 8)
    assert (atime, mtime, ctime) == (1_700_000_000, 1_700_000_001, 1_700_000_002)
    ans, mns, cns, mode, nlink, uid, gid, rdev, blksize, flags = struct.unpack_from("<10I", raw, 88)
    assert (ans, mns, cns) == (123_456_789, 1, 999_999_999)
    assert (mode, nlink, uid, gid, rdev, blksize, flags) == (0o100644, 2, 10, 20, 0, 4096, 0)


def test_attr_out_layout():
    raw = P.attr_out(_stat())
    assert len(raw) == 104
    assert struct.unpack_from("<QII", raw, 0) == (0, 0, 0)
    assert struct.unpack_from("<Q", raw, 16) == (1234,)


def test_device_numbers_round_trip():
    for major, minor in ((0, 0), (1, 3), (8, 17), (259, 70000), (4095, 0xFFFFF)):
        dev = os.makedev(major, minor)
        st = _stat(st_rdev=dev)
        encoded = P.attr_fields(st)["rdev"]
        # the kernel's new_encode_dev layout
        assert encoded == (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
        assert P.decode_dev(encoded) == dev


def test_open_out_and_statfs_layout():
    assert P.open_out(9, P.FOPEN_PASSTHROUGH, 3) == struct.pack("<QIi", 9, 0x80, 3)
    sv = os.statvfs_result((4096, 1024, 10, 9, 8, 7, 6, 5, 0, 255))
    raw = P.statfs_out(sv)
    assert struct.unpack_from("<5Q4I", raw, 0) == (10, 9, 8, 7, 6, 4096, 255, 1024, 0)
    assert raw[56:] == bytes(24)


def test_dirent_padding():
    rec = P.dirent(5, 1, b"abc", 8)
    assert len(rec) == 32 == P.dirent_size(b"abc")
    assert rec == struct.pack("<QQII", 5, 1, 3, 8) + b"abc" + bytes(5)
    assert len(P.dirent(5, 2, b"12345678", 4)) == 32
    assert len(P.dirent(5, 2, b"x" * 255, 4)) == 280
    plus = P.direntplus(bytes(128), 5, 1, b"abc", 8)
    assert len(plus) == P.dirent_size(b"abc", plus=True) == 160


def test_split_names():
    assert P.split_names(b"old\0new\0", 2) == [b"old", b"new"]
    assert P.split_names(memoryview(b"a b\xff\0"), 1) == [b"a b\xff"]


# --- INIT ------------------------------------------------------------------------------------

KERNEL_FLAGS_6_18 = 0x5fd73fffffb  # what this machine's kernel offered (research notes, Q4)


def _init_body(major, minor, readahead, flags):
    return struct.pack("<5I44x", major, minor, readahead, flags & 0xFFFFFFFF, flags >> 32)


def test_init_request_parsing():
    req = P.parse_init(_init_body(7, 45, 131072, KERNEL_FLAGS_6_18))
    assert (req.major, req.minor, req.max_readahead, req.flags) == (7, 45, 131072,
                                                                   KERNEL_FLAGS_6_18)
    old = P.parse_init(struct.pack("<4I", 7, 31, 65536, 0x3FFFFFF))
    assert old.flags == 0x3FFFFFF


def test_init_reply_bytes_with_passthrough():
    neg = P.negotiate(P.parse_init(_init_body(7, 45, 131072, KERNEL_FLAGS_6_18)))
    assert neg.passthrough and neg.minor == 45 and not neg.retry
    wanted = (1 << 0) | (1 << 3) | (1 << 5) | (1 << 13) | (1 << 14) | (1 << 18) | (1 << 22) \
        | (1 << 28) | (1 << 30) | (1 << 36) | (1 << 37)
    assert neg.flags == wanted & KERNEL_FLAGS_6_18
    expected = bytearray(64)
    struct.pack_into("<IIII", expected, 0, 7, 45, 131072, neg.flags & 0xFFFFFFFF)
    struct.pack_into("<HH", expected, 16, 16, 12)  # max_background, congestion_threshold
    struct.pack_into("<II", expected, 20, 1 << 20, 1)  # max_write, time_gran
    struct.pack_into("<HH", expected, 28, 256, 0)  # max_pages, map_alignment
    struct.pack_into("<II", expected, 32, neg.flags >> 32, 1)  # flags2, max_stack_depth
    assert neg.reply == bytes(expected)
    assert struct.unpack_from("<I", neg.reply, 32)[0] & (1 << 5)  # FUSE_PASSTHROUGH in flags2
    assert not neg.flags & (1 << 16)  # never the writeback cache


def test_init_without_passthrough_says_why():
    old = P.negotiate(P.parse_init(_init_body(7, 38, 131072, 0x3FFFFFFF | (1 << 30))))
    assert not old.passthrough and "7.38" in old.note and old.minor == 38
    assert struct.unpack_from("<I", old.reply, 36)[0] == 0  # max_stack_depth 0
    no_cfg = P.negotiate(P.parse_init(_init_body(7, 45, 131072,
                                                 KERNEL_FLAGS_6_18 & ~(1 << 37))))
    assert not no_cfg.passthrough and "not offered" in no_cfg.note
    off = P.negotiate(P.parse_init(_init_body(7, 45, 131072, KERNEL_FLAGS_6_18)),
                      want_passthrough=False)
    assert not off.passthrough and "disabled" in off.note
    # flags2 bits are ignored unless the kernel set FUSE_INIT_EXT
    no_ext = P.negotiate(P.parse_init(_init_body(7, 45, 0, (1 << 37) | 1)))
    assert not no_ext.passthrough


def test_init_newer_major_asks_for_retry():
    neg = P.negotiate(P.InitRequest(8, 0, 0, 0))
    assert neg.retry and struct.unpack_from("<II", neg.reply) == (7, 45)
    with pytest.raises(P.ProtocolError):
        P.negotiate(P.InitRequest(6, 0, 0, 0))


# --- fuse-bpf ---------------------------------------------------------------------------------

def test_bpf_response_ioctl_number():
    for n in (16, 144, 168, 192, 4096):
        assert B.bpf_response_ioctl(n) == 0x40000000 | n << 16 | 0xE57D
    assert B.bpf_response_ioctl(192) == 0x40C0E57D
    for bad in (0, 4097):
        with pytest.raises(B.FuseBpfError):
            B.bpf_response_ioctl(bad)


def test_lookup_reply_with_entries_layout():
    entry = P.entry_out(0, _stat())
    raw = B.lookup_reply(0x55, entry, [B.program("sec_3"), B.backing(9)])
    assert len(raw) == 16 + 128 + 2 * 24 == 192
    assert struct.unpack_from("<IiQ", raw, 0) == (192, 0, 0x55)
    assert raw[16:144] == entry
    # first fuse_bpf_entry_out @144: FUSE_ENTRY_BPF, unused 0, NUL-terminated name[16]
    assert struct.unpack_from("<II", raw, 144) == (2, 0)
    assert raw[152:168] == b"sec_3" + bytes(11)
    # second @168: FUSE_ENTRY_BACKING, unused 0, unused2 0, fd
    assert struct.unpack_from("<IIQQ", raw, 168) == (1, 0, 0, 9)


def test_lookup_reply_without_entries_is_a_plain_entry():
    entry = P.entry_out(7, _stat())
    assert B.lookup_reply(1, entry, []) == P.reply(1, entry)


def test_entry_rules():
    entry = P.entry_out(0, _stat())
    with pytest.raises(B.FuseBpfError):  # entries need a BACKING entry
        B.lookup_reply(1, entry, [B.program("x")])
    with pytest.raises(B.FuseBpfError):  # one backing action at most
        B.lookup_reply(1, entry, [B.backing(3), B.Entry(B.EntryType.REMOVE_BACKING)])
    with pytest.raises(B.FuseBpfError):  # at most two entries
        B.lookup_reply(1, entry, [B.backing(3), B.program("a"), B.program("b")])
    with pytest.raises(B.FuseBpfError):
        B.lookup_reply(1, bytes(120), [])
    assert B.Entry(B.EntryType.REMOVE_BPF).pack() == struct.pack("<IIQQ", 4, 0, 0, 0)
    # a 14-character name fills the field with room for its NUL; 15 is refused
    assert B.program("abcdefghijklmn").pack()[8:] == b"abcdefghijklmn\0\0"
    for bad in ("abcdefghijklmno", "", "a-b", "é"):
        with pytest.raises(B.FuseBpfError):
            B.program(bad).pack()


def test_mount_option_strings():
    assert B.mount_options(5, "media_0", dev_fd=4) == \
        "fd=4,rootmode=40000,user_id=0,group_id=0,root_dir=5,root_bpf=media_0"
    assert B.mount_options(5, "media_0", dev_fd=4, no_daemon=True) == \
        "fd=4,rootmode=40000,user_id=0,group_id=0,root_dir=5,root_bpf=media_0,no_daemon"
    assert B.mount_options(5, "m", no_daemon=True) == \
        "rootmode=40000,user_id=0,group_id=0,root_dir=5,root_bpf=m,no_daemon"
    assert B.mount_options(5, "m", dev_fd=4, shared=True) == \
        "fd=4,rootmode=40000,user_id=0,group_id=0,root_dir=5,root_bpf=m," \
        "allow_other,default_permissions"
    with pytest.raises(B.FuseBpfError):
        B.mount_options(5, "m")  # a daemon mount needs fd=
    with pytest.raises(B.FuseBpfError):
        B.mount_options(5, "this_is_too_long", dev_fd=4)


def _filter_request(opcode, args, error_in=None, unique=11, nodeid=1):
    ext = B.error_in_extension(error_in) if error_in is not None else b""
    length = 40 + len(args) + len(ext)
    header = struct.pack("<IIQQIIIHH", length, opcode, unique, nodeid, 0, 0, 321,
                         len(ext) // 8, 0)
    return header + args + ext


def test_error_in_extension_bytes():
    assert B.error_in_extension(-errno.ENOENT) == struct.pack("<IIiI", 16, 33, -2, 0)
    assert struct.unpack("<IIII", B.error_in_extension(-2)) == (16, 33, 0xFFFFFFFE, 0)


def test_parse_postfilter_lookup_request():
    args = b"hide\0" + P.entry_out(0, _stat()) + b""  # name, entry_out, entries (size 0)
    raw = _filter_request(1 | B.FUSE_POSTFILTER, args, error_in=-errno.ENOENT, nodeid=6)
    req = B.parse_filter_request(raw)
    assert (req.opcode, req.phase, req.error_in, req.nodeid, req.unique, req.pid) == \
        (1, "post", -2, 6, 11, 321)
    assert req.args == args
    assert struct.unpack_from("<H", raw, 36)[0] == 2  # total_extlen


def test_parse_prefilter_request():
    raw = _filter_request(14 | B.FUSE_PREFILTER, struct.pack("<II", os.O_RDONLY, 0))
    req = B.parse_filter_request(raw)
    assert (req.opcode, req.phase, req.error_in) == (14, "pre", None)
    assert req.args == struct.pack("<II", 0, 0)


def test_parse_filter_request_rejects():
    with pytest.raises(B.FuseBpfError):  # not a filter request
        B.parse_filter_request(_filter_request(1, b"x\0"))
    with pytest.raises(B.FuseBpfError):  # post without error_in
        B.parse_filter_request(_filter_request(1 | B.FUSE_POSTFILTER, b"x\0"))
    with pytest.raises(B.FuseBpfError):  # both phases
        B.parse_filter_request(_filter_request(1 | B.FUSE_PREFILTER | B.FUSE_POSTFILTER, b""))
    raw = _filter_request(1 | B.FUSE_PREFILTER, b"x\0")
    with pytest.raises(B.FuseBpfError):  # truncated
        B.parse_filter_request(raw[:-1])


def test_filter_replies():
    assert B.filter_reply(3, -errno.EACCES) == struct.pack("<IiQ", 16, -13, 3)
    assert B.filter_reply(3, 0, b"ab") == struct.pack("<IiQ", 18, 0, 3) + b"ab"
    with pytest.raises(B.FuseBpfError):
        B.filter_reply(3, -512)


def test_mountinfo_unescape():
    assert _unescape(r"/tmp/a\040b\011c\134d") == "/tmp/a b\tc\\d"
    assert _unescape("/plain") == "/plain"
