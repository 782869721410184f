"""`fpol mount` on a fuse-bpf kernel: what can be checked on a kernel without fuse-bpf.

The daemon side (runtime/fuse/bpfserver.py) is driven with the request bytes spec §8/§9
describes, over a socket pair standing in for /dev/fuse; the replies are checked byte for
byte, including the lookup replies that must carry entries through the BPF_RESPONSE ioctl.
On this kernel, `--mode fuse-bpf` must refuse cleanly.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from fpol.compiler.driver import check
from fpol.runtime.fuse import fusebpf
from fpol.runtime.fuse import protocol as P
from fpol.runtime.fuse.bpfserver import FuseBpfServer, split_in_args
from fpol.runtime.fuse.device import Channel
from fpol.runtime.fuse.enforce import AuditLog, Enforcer

POLICY = b"""policy fbt
deny write under /ro with EROFS
redirect lookup, getattr to userspace under /daemon
redirect open to userspace before under /vetted
redirect getattr to userspace after under /seen
"""


def header(opcode: int, unique: int, nodeid: int, body: bytes, extlen: int = 0) -> bytes:
    return P.IN_HEADER.pack(len=P.IN_HEADER.size + len(body), opcode=opcode, unique=unique,
                            nodeid=nodeid, uid=0, gid=0, pid=4242, total_extlen=extlen,
                            padding=0) + body


class Rig:
    def __init__(self, tmp_path, handler=None, policy: bytes = POLICY, prefix: str = "fbt"):
        self.backing = tmp_path / "backing"
        for d in ("ro", "daemon", "vetted", "seen"):
            (self.backing / d).mkdir(parents=True)
        (self.backing / "daemon" / "file").write_text("x")
        os.symlink("file", self.backing / "daemon" / "link")
        (self.backing / "vetted" / "doc").write_text("y")
        self.audit_path = tmp_path / "audit.jsonl"
        self.logs: list[str] = []
        checked = check(policy, f"{prefix}.fpol").require()
        self.tree = checked.classes
        enforcer = Enforcer(checked.classes, AuditLog(open(self.audit_path, "a"), checked.policy),
                            handler, "test" if handler else "default")
        self.kernel_end, daemon_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ioctls: list[bytes] = []
        root = os.open(self.backing, os.O_PATH | os.O_DIRECTORY)
        self.server = FuseBpfServer(Channel(daemon_end.detach()), root, enforcer,
                                    lambda cls: f"{prefix}_{cls}",
                                    send_bpf_response=lambda fd, reply: self.ioctls.append(reply),
                                    log=self.logs.append)

    def ask(self, request: bytes) -> bytes:
        """Send one request as the kernel would; the daemon's written reply (or b'')."""
        self.kernel_end.send(request)
        self.server.dispatch(self.server.ch.read())
        self.kernel_end.setblocking(False)
        try:
            return self.kernel_end.recv(1 << 16)
        except BlockingIOError:
            return b""
        finally:
            self.kernel_end.setblocking(True)

    def lookup(self, parent: int, name: bytes, unique: int = 1) -> int:
        """A daemon lookup; returns the nodeid it assigned."""
        reply = self.ask(header(P.Opcode.LOOKUP, unique, parent, name + b"\0"))
        data = reply or self.ioctls[-1]
        return P.ENTRY_OUT.unpack(data, P.OUT_HEADER.size).nodeid

    def audit(self) -> list[dict]:
        return [json.loads(l) for l in self.audit_path.read_text().splitlines()]


def test_user_lookup_reply_carries_backing_and_instance_through_the_ioctl(tmp_path):
    rig = Rig(tmp_path)
    daemon = rig.lookup(P.ROOT_ID, b"daemon")
    assert rig.ask(header(P.Opcode.LOOKUP, 9, daemon, b"file\0")) == b""  # nothing written
    reply = rig.ioctls[-1]
    h = P.OUT_HEADER.unpack(reply)
    assert (h.len, h.error, h.unique) == (len(reply), 0, 9)
    assert len(reply) == P.OUT_HEADER.size + P.ENTRY_OUT.size + 2 * 24
    entry = P.ENTRY_OUT.unpack(reply, P.OUT_HEADER.size)
    assert entry.nodeid > P.ROOT_ID and entry.size == 1
    first, second = (reply[P.OUT_HEADER.size + P.ENTRY_OUT.size + 24 * i:][:24] for i in range(2))
    etype, unused, _, fd = struct.unpack("<IIQQ", first)
    assert (etype, unused) == (fusebpf.EntryType.BACKING, 0) and fd >= 0
    etype, unused, name = struct.unpack("<II16s", second)
    cls = rig.tree.classify((b"daemon", b"file")).id
    assert (etype, unused) == (fusebpf.EntryType.BPF, 0)
    assert name.rstrip(b"\0") == f"fbt_{cls}".encode()
    # The daemon performed the redirected lookup and logged it (default handler).
    assert any(e["op"] == "lookup" and e["path"] == "/daemon/file" for e in rig.audit())


def test_lookup_of_what_cannot_be_a_backing_file_is_a_plain_reply(tmp_path):
    rig = Rig(tmp_path)
    daemon = rig.lookup(P.ROOT_ID, b"daemon")
    before = len(rig.ioctls)
    reply = rig.ask(header(P.Opcode.LOOKUP, 5, daemon, b"link\0"))
    assert len(rig.ioctls) == before
    assert P.OUT_HEADER.unpack(reply).error == 0 and len(reply) == P.OUT_HEADER.size + P.ENTRY_OUT.size


def test_prefilter_open_is_vetted_and_echoes_its_in_args(tmp_path):
    rig = Rig(tmp_path)
    vetted = rig.lookup(P.ROOT_ID, b"vetted")
    doc = rig.lookup(vetted, b"doc", unique=2)
    open_in = struct.pack("<II", os.O_RDONLY, 0)
    reply = rig.ask(header(P.Opcode.OPEN | fusebpf.FUSE_PREFILTER, 11, doc, open_in))
    h = P.OUT_HEADER.unpack(reply)
    assert (h.error, h.unique) == (0, 11) and reply[P.OUT_HEADER.size:] == open_in
    assert any(e["op"] == "open" and e["mode"] == "before" and e["path"] == "/vetted/doc"
               for e in rig.audit())


def test_prefilter_reply_leaves_out_an_immutable_last_name(tmp_path):
    rig = Rig(tmp_path)
    mkdir_in = struct.pack("<II", 0o755, 0o022)
    reply = rig.ask(header(P.Opcode.MKDIR | fusebpf.FUSE_PREFILTER, 12, P.ROOT_ID,
                           mkdir_in + b"newdir\0"))
    assert reply[P.OUT_HEADER.size:] == mkdir_in


def test_postfilter_returns_the_out_args_and_sees_error_in(tmp_path):
    seen = []
    rig = Rig(tmp_path, handler=lambda ev: seen.append(ev) or None)
    node = rig.lookup(P.ROOT_ID, b"seen")
    getattr_in = struct.pack("<IIQ", 0, 0, 0)
    attr_out = bytes(range(104))
    body = getattr_in + attr_out + fusebpf.error_in_extension(-2)
    reply = rig.ask(header(P.Opcode.GETATTR | fusebpf.FUSE_POSTFILTER, 13, node, body, extlen=2))
    assert P.OUT_HEADER.unpack(reply).error == 0
    assert reply[P.OUT_HEADER.size:] == attr_out
    assert seen[-1]["mode"] == "after" and seen[-1]["result"] == -2 and seen[-1]["path"] == "/seen"


def test_postfilter_lookup_reply_goes_through_the_ioctl(tmp_path):
    rig = Rig(tmp_path)
    entry_out = bytes(P.ENTRY_OUT.size)
    body = b"x\0" + entry_out + fusebpf.error_in_extension(0)
    assert rig.ask(header(P.Opcode.LOOKUP | fusebpf.FUSE_POSTFILTER, 14, P.ROOT_ID, body,
                          extlen=2)) == b""
    assert rig.ioctls[-1][P.OUT_HEADER.size:] == entry_out


def test_a_handler_refusal_fails_the_filter_request(tmp_path):
    rig = Rig(tmp_path, handler=lambda ev: "EPERM")
    vetted = rig.lookup(P.ROOT_ID, b"vetted")
    reply = rig.ask(header(P.Opcode.OPEN | fusebpf.FUSE_PREFILTER, 15, vetted,
                           struct.pack("<II", 0, 0)))
    assert P.OUT_HEADER.unpack(reply).error == -1
    assert any(e["errno"] == "EPERM" for e in rig.audit())


def test_a_malformed_filter_request_gets_eio(tmp_path):
    rig = Rig(tmp_path)
    reply = rig.ask(header(P.Opcode.LOOKUP | fusebpf.FUSE_PREFILTER, 16, P.ROOT_ID, b"noterm"))
    assert P.OUT_HEADER.unpack(reply).error == -5


def test_an_internal_error_on_a_filter_request_gets_eio_and_the_server_goes_on(tmp_path):
    """A bug behind a filter request (here: a decision that fails) refuses that request
    with EIO and is logged; the serving thread is not stopped and answers the next one."""
    rig = Rig(tmp_path)
    vetted = rig.lookup(P.ROOT_ID, b"vetted")
    real = rig.server._filter_decision

    def broken(*args):
        raise RuntimeError("decision failed")

    rig.server._filter_decision = broken
    reply = rig.ask(header(P.Opcode.OPEN | fusebpf.FUSE_PREFILTER, 17, vetted,
                           struct.pack("<II", 0, 0)))
    assert P.OUT_HEADER.unpack(reply).error == -5
    assert any("internal error" in line and "decision failed" in line for line in rig.logs)
    rig.server._filter_decision = real
    reply = rig.ask(header(P.Opcode.OPEN | fusebpf.FUSE_PREFILTER, 18, vetted,
                           struct.pack("<II", 0, 0)))
    assert P.OUT_HEADER.unpack(reply).error == 0


def test_split_in_args_knows_the_layouts():
    assert split_in_args(P.Opcode.LOOKUP, b"name\0rest") == (5, [b"name"])
    assert split_in_args(P.Opcode.SETXATTR, bytes(16) + b"user.a\0value\0") == (29, [b"user.a", b"value"])
    assert split_in_args(P.Opcode.GETATTR, bytes(16) + bytes(104)) == (16, [])


def test_fuse_bpf_mode_is_refused_cleanly_on_this_kernel(tmp_path):
    from fpol.runtime.probe import fuse_ops_abi

    if fuse_ops_abi() is not None:
        pytest.skip("this kernel has struct fuse_ops: the refusal does not apply")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    policy = tmp_path / "p.fpol"
    policy.write_bytes(POLICY)
    pins = set(os.listdir("/sys/fs/bpf")) if os.path.isdir("/sys/fs/bpf") else set()
    proc = subprocess.run(["fpol", "mount", "--mode", "fuse-bpf", str(policy), str(src), str(mnt)],
                          capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert "no struct fuse_ops" in proc.stderr and "--mode daemon" in proc.stderr
    with open("/proc/self/mounts") as f:
        assert str(mnt) not in f.read()
    assert (set(os.listdir("/sys/fs/bpf")) if os.path.isdir("/sys/fs/bpf") else set()) == pins


# --- requests naming nodeid 0, as the RFC kernel sends them for inodes it looked up itself --

ANDROID = (Path(__file__).resolve().parent.parent / "examples" / "android-media.fpol").read_bytes()
ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in (
    (0x01, 6, 0xFFFFFFFF), (0x02, 4, 1000), (0x04, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
    (0x20, 4, 0xFFFFFFFF)))  # user::rw- user:1000:r-- group::r-- mask::r-- other::r--


def getxattr_request(unique: int, nodeid: int, name: bytes, size: int = 4096) -> bytes:
    return header(P.Opcode.GETXATTR, unique, nodeid, P.GETXATTR_IN.pack(size=size, padding=0)
                  + name + b"\0")


def error_reply(unique: int, err: int) -> bytes:
    return struct.pack("<IiQ", 16, -err, unique)


def test_lookup_under_nodeid_0_is_answered_eio_never_estale(tmp_path):
    """The daemon cannot tell which directory nodeid 0 is; it says EIO (and logs why),
    never ESTALE. The realisation keeps the kernel from sending this (next test)."""
    rig = Rig(tmp_path)
    request = header(P.Opcode.LOOKUP, 21, 0, b"file\0")
    assert request == struct.pack("<IIQQIIIHH", 40 + 5, P.Opcode.LOOKUP, 21, 0, 0, 0, 4242, 0, 0) \
        + b"file\0"
    assert rig.ask(request) == error_reply(21, errno.EIO)
    assert any("nodeid 0" in line and "EIO" in line for line in rig.logs)
    assert rig.ioctls == []


def test_android_media_lookups_resolve_through_the_daemon(tmp_path):
    """android-media: each directory on the way to Android/data is looked up by the daemon
    (the realisation sends those lookups to userspace), so every LOOKUP names a parent the
    daemon handed out. Each reply, byte for byte: entry_out with the daemon's nodeid, a
    BACKING entry and the child's instance."""
    rig = Rig(tmp_path, policy=ANDROID, prefix="media")
    app = rig.backing / "storage" / "emulated" / "Android" / "data" / "com.app"
    app.mkdir(parents=True)
    (app / "f").write_bytes(b"hello")
    parent, path, unique = P.ROOT_ID, (), 30
    for name in (b"storage", b"emulated", b"Android", b"data", b"com.app", b"f"):
        path += (name,)
        unique += 1
        assert rig.ask(header(P.Opcode.LOOKUP, unique, parent, name + b"\0")) == b""
        reply = rig.ioctls[-1]
        nodeid = P.ENTRY_OUT.unpack(reply, P.OUT_HEADER.size).nodeid
        assert nodeid not in (0, P.ROOT_ID, parent)
        st = os.lstat(rig.backing.joinpath(*(n.decode() for n in path)))
        (fd,) = struct.unpack_from("<Q", reply, P.OUT_HEADER.size + P.ENTRY_OUT.size + 16)
        cls = rig.tree.classify(path).id
        expected = P.reply(unique, P.entry_out(nodeid, st)
                           + struct.pack("<IIQQ", fusebpf.EntryType.BACKING, 0, 0, fd)
                           + struct.pack("<II16s", fusebpf.EntryType.BPF, 0, f"media_{cls}".encode()))
        assert reply == expected
        parent = nodeid
    assert not any("nodeid 0" in line for line in rig.logs)


@pytest.mark.parametrize("name", [b"system.posix_acl_access", b"system.posix_acl_default"])
def test_acl_read_of_nodeid_0_is_enodata(tmp_path, name):
    """The RFC kernel sends `ls -l`'s ACL reads of backed inodes to the daemon, past the
    programs, naming nodeid 0: "no ACL", not an error per entry."""
    rig = Rig(tmp_path)
    request = getxattr_request(22, 0, name)
    assert len(request) == 40 + 8 + len(name) + 1
    assert rig.ask(request) == error_reply(22, errno.ENODATA)
    assert rig.ask(getxattr_request(23, 0, name, size=0)) == error_reply(23, errno.ENODATA)
    assert not rig.logs


def test_other_xattr_read_of_nodeid_0_is_eio_with_a_reason(tmp_path):
    rig = Rig(tmp_path)
    assert rig.ask(getxattr_request(24, 0, b"user.x")) == error_reply(24, errno.EIO)
    assert any("getxattr of nodeid 0" in line for line in rig.logs)


def test_acl_read_of_a_node_the_daemon_knows_is_the_backing_files_acl(tmp_path):
    rig = Rig(tmp_path)
    target = rig.backing / "daemon" / "file"
    os.setxattr(target, "system.posix_acl_access", ACL)
    daemon = rig.lookup(P.ROOT_ID, b"daemon")
    node = rig.lookup(daemon, b"file", unique=2)
    stored = os.getxattr(target, "system.posix_acl_access")
    assert rig.ask(getxattr_request(25, node, b"system.posix_acl_access")) == P.reply(25, stored)
    size_only = rig.ask(getxattr_request(26, node, b"system.posix_acl_access", size=0))
    assert size_only == P.reply(26, struct.pack("<II", len(stored), 0))
    # The other file has none: ENODATA, as the backing file says.
    vetted = rig.lookup(P.ROOT_ID, b"vetted", unique=3)
    assert rig.ask(getxattr_request(27, vetted, b"system.posix_acl_default")) == \
        error_reply(27, errno.ENODATA)


# --- audit lines and handler events name the path and the deciding rule -------------------

def test_filter_events_name_the_path_and_the_deciding_rule(tmp_path):
    seen = []
    rig = Rig(tmp_path, handler=lambda ev: seen.append(ev) or None)
    vetted = rig.lookup(P.ROOT_ID, b"vetted")
    doc = rig.lookup(vetted, b"doc", unique=2)
    reply = rig.ask(header(P.Opcode.OPEN | fusebpf.FUSE_PREFILTER, 40, doc, struct.pack("<II", 0, 0)))
    assert P.OUT_HEADER.unpack(reply).error == 0
    rule = {"line": 4, "text": "redirect open to userspace before under /vetted",
            "file": "fbt.fpol"}
    assert seen[-1]["path"] == "/vetted/doc" and seen[-1]["rule"] == rule
    assert "path_unknown" not in seen[-1]
    # Without a handler the default one performs and logs it: the same path and rule.
    rig2 = Rig(tmp_path / "2")
    vetted = rig2.lookup(P.ROOT_ID, b"vetted")
    doc = rig2.lookup(vetted, b"doc", unique=2)
    rig2.ask(header(P.Opcode.OPEN | fusebpf.FUSE_PREFILTER, 41, doc, struct.pack("<II", 0, 0)))
    line = [e for e in rig2.audit() if e["op"] == "open"][-1]
    assert line["path"] == "/vetted/doc" and line["rule"] == rule and line["mode"] == "before"
    assert "path_unknown" not in line


def test_a_lookup_filter_names_the_child_and_its_rule(tmp_path):
    policy = POLICY + b"redirect lookup to userspace before under /vetted\n"
    seen = []
    rig = Rig(tmp_path, handler=lambda ev: seen.append(ev) or None, policy=policy)
    vetted = rig.lookup(P.ROOT_ID, b"vetted")
    rig.ask(header(P.Opcode.LOOKUP | fusebpf.FUSE_PREFILTER, 42, vetted, b"doc\0"))
    assert seen[-1]["path"] == "/vetted/doc"
    assert seen[-1]["rule"] == {"line": 6, "text": "redirect lookup to userspace before under /vetted",
                                "file": "fbt.fpol"}


@pytest.mark.parametrize("nodeid, why", [(0, "nodeid 0"), (987654, "not in the daemon's node table")])
def test_a_filter_event_whose_path_is_unknowable_says_so(tmp_path, nodeid, why):
    seen = []
    rig = Rig(tmp_path, handler=lambda ev: seen.append(ev) or None)
    rig.ask(header(P.Opcode.OPEN | fusebpf.FUSE_PREFILTER, 43, nodeid, struct.pack("<II", 0, 0)))
    assert seen[-1]["path"] is None and why in seen[-1]["path_unknown"]
    assert seen[-1]["rule"] is None  # the class is unknown: so is the rule, never a guess
    rig2 = Rig(tmp_path / "2")
    rig2.ask(header(P.Opcode.OPEN | fusebpf.FUSE_PREFILTER, 44, nodeid, struct.pack("<II", 0, 0)))
    line = rig2.audit()[-1]
    assert line["path"] is None and why in line["path_unknown"] and line["rule"] is None
    assert line["decision"] == "userspace" and line["mode"] == "before"
