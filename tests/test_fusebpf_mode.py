"""`fpol mount` on a fuse-bpf kernel: what can be checked on a kernel without fuse-bpf.

The daemon side (runtime/fuse/bpfserver.py) is driven with the request bytes spec §8/§9
describes, over a socket pair standing in for /dev/fuse; the replies are checked byte for
byte, including the lookup replies that must carry entries through the BPF_RESPONSE ioctl.
On this kernel, `--mode fuse-bpf` must refuse cleanly.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess

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
    def __init__(self, tmp_path, handler=None):
        self.backing = tmp_path / "backing"
        for d in ("ro", "daemon", "vetted", "seen"):
            (self.backing / d).mkdir(parents=True)
        (self.backing / "daemon" / "file").write_text("x")
        os.symlink("file", self.backing / "daemon" / "link")
        (self.backing / "vetted" / "doc").write_text("y")
        self.audit_path = tmp_path / "audit.jsonl"
        checked = check(POLICY, "fbt.fpol").require()
        self.tree = checked.classes
        enforcer = Enforcer(checked.classes, AuditLog(open(self.audit_path, "a"), checked.policy),
                            handler, "test" if handler else "default")
        self.kernel_end, daemon_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ioctls: list[bytes] = []
        root = os.open(self.backing, os.O_PATH | os.O_DIRECTORY)
        self.server = FuseBpfServer(Channel(daemon_end.detach()), root, enforcer,
                                    lambda cls: f"fbt_{cls}",
                                    send_bpf_response=lambda fd, reply: self.ioctls.append(reply),
                                    log=lambda msg: None)

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
