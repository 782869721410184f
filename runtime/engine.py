"""The kernel engine: decide requests with the policy's check object, loaded in
this kernel and run through BPF_PROG_TEST_RUN.

The request is written into the object's `fpol_requests` map the way fuse-bpf
would present it (names as components, the parent directories' nodeids: 1 for
the root, 0 below it), `fpol_check` runs, and its decision word becomes a Verdict.
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass
from typing import Optional

from fpol.compiler.decide import Decision
from fpol.compiler.evaluate import Request, Verdict
from fpol.compiler.lower import MAX_DEPTH, OP_NUMBER
from fpol.compiler.word import unpack

from . import libbpf
from .objects import Built, build
from fpol.compiler.errors import EnvironmentProblem, UsageProblem

NAME_SLOT = 256
REQUEST_SIZE = 4 * 11 + 4 * 2 * MAX_DEPTH + 2 * MAX_DEPTH * NAME_SLOT
RESULT_SIZE = 4 * 5


class EngineUnavailable(EnvironmentProblem):
    """This machine cannot run the check object (exit code 3)."""


class RequestTooLarge(UsageProblem, ValueError):
    pass


@dataclass
class LoadReport:
    load_ms: float
    programs: list[tuple[str, Optional[libbpf.VerifierStats]]]


def encode_request(req: Request, subjects: bool = False) -> bytes:
    """The check object's `struct fpol_request` for `req`; a policy with subject conditions
    (`subjects`) has the requester's uid and gid at its end."""
    paths = [req.path, req.to or ()]
    for p in paths:
        if len(p) > MAX_DEPTH:
            raise RequestTooLarge(f"the kernel engine takes paths of at most {MAX_DEPTH} components")
    head = struct.pack("<3I", OP_NUMBER[req.op], req.flags, req.mask)
    depth = struct.pack("<2I", len(paths[0]), len(paths[1]))
    nodeids = struct.pack("<2I", *(1 if len(p) == 1 else 0 for p in paths))
    outputs = bytes(16)  # out_cls[2], out_parent[2]: written by the program
    lens = b"".join(struct.pack("<I", len(p[i]) if i < len(p) else 0)
                    for p in paths for i in range(MAX_DEPTH))
    names = b"".join((p[i] if i < len(p) else b"").ljust(NAME_SLOT, b"\0")
                     for p in paths for i in range(MAX_DEPTH))
    data = head + depth + nodeids + outputs + lens + names
    assert len(data) == REQUEST_SIZE
    if subjects:
        data += struct.pack("<2I", req.uid, req.gid)
    return data


def verdict_from_word(req: Request, word: int, classes: tuple[int, ...] = ()) -> Verdict:
    d = unpack(word)
    decision = Decision(d["kind"], errno=d["errno"], mode=d["mode"], audit=d["audit"],
                        rules=(d["rule"],) if d["rule"] is not None else (),
                        complained=d["complained"])
    note = None
    if d["realised"]:
        note = "refused by the fuse-bpf realisation (see docs/realisation.md)"
    return Verdict(req, decision, exdev=d["realised"] and d["errno"] == "EXDEV",
                   note=note, classes=classes)


class CheckEngine:
    """A loaded check object. Use as a context manager, or close() it."""

    def __init__(self, built: Built):
        self.built = built
        try:
            self.obj = libbpf.BpfObject(built.path)
        except libbpf.LibbpfMissing as e:
            raise EngineUnavailable(str(e)) from None
        for p in self.obj.programs():
            p.want_stats()
        start = time.perf_counter()
        try:
            self.obj.load()
        except libbpf.LibbpfError as e:
            self.obj.close()
            if e.errno in (1, 13):  # EPERM, EACCES
                raise EngineUnavailable(
                    "the kernel refused to load BPF programs (needs root or CAP_BPF + "
                    f"CAP_PERFMON): {e}") from None
            raise
        self.report = LoadReport((time.perf_counter() - start) * 1000,
                                 [(p.name, p.stats) for p in self.obj.programs()
                                  if p.name in ("fpol_check", "fpol_hook", "fpol_whoami")])
        self.program = self.obj.program("fpol_check")
        self.requests = self.obj.map("fpol_requests")
        # Who is asking is part of a request only where the policy tells requesters apart.
        self.subjects = built.model.subjects.count > 1

    def evaluate(self, req: Request) -> Verdict:
        self.requests.update(struct.pack("<I", 0), encode_request(req, self.subjects))
        ctx = bytearray(RESULT_SIZE)
        ret = self.program.test_run(ctx)
        if ret != 0:
            raise RuntimeError(f"fpol_check returned {ret}")
        word, cls0, cls1, _p0, _p1 = struct.unpack("<5I", bytes(ctx))
        return verdict_from_word(req, word, (cls0, cls1))

    HOOK_KINDS = ("object", "fsync", "lookup", "lookup_post", "create", "remove", "rename",
                  "rename2", "link", "cfr")

    def hook(self, kind: str, cls: int, op: str = "lookup", flags: int = 0, opcode: int = 0,
             nodeid: int = 0, newdir: int = 0, names: tuple[bytes, ...] = (),
             uid: int = 0, gid: int = 0) -> tuple[int, int, int]:
        """What one fuse_ops program reading class `cls` returns for one call made by
        `uid`, `gid`: (return code as u32, decision word, child class)."""
        names = tuple(names) + (b"",) * (2 - len(names))
        req = struct.pack("<6I2Q2I", self.HOOK_KINDS.index(kind), cls, OP_NUMBER[op], flags,
                          opcode, 0, nodeid, newdir, len(names[0]), len(names[1]))
        req += b"".join(n.ljust(NAME_SLOT, b"\0") for n in names)
        if self.subjects:
            req += struct.pack("<2I", uid, gid)
        self.obj.map("fpol_hook_requests").update(struct.pack("<I", 0), req)
        ctx = bytearray(12)
        ret = self.obj.program("fpol_hook").test_run(ctx)
        if ret != 0:
            raise RuntimeError(f"fpol_hook returned {ret}")
        return struct.unpack("<3I", bytes(ctx))

    def bench(self, req: Request, iterations: int, empty: bool = False) -> tuple[float, int]:
        """(ns per decision measured inside the kernel, the decision word)."""
        self.requests.update(struct.pack("<I", 0), encode_request(req, self.subjects))
        ctx = bytearray(struct.pack("<QQII", iterations, 0, 0, 0))
        self.obj.program("fpol_bench_empty" if empty else "fpol_bench").test_run(ctx)
        _, ns, word, _ = struct.unpack("<QQII", bytes(ctx))
        return ns / iterations, word

    def whoami(self) -> int:
        """The subject class the struct_ops programs' credential reading finds for the
        calling thread (its fsuid and fsgid); only for policies with subject conditions."""
        ctx = bytearray(4)
        ret = self.obj.program("fpol_whoami").test_run(ctx)
        if ret != 0:
            raise RuntimeError(f"fpol_whoami returned {ret}")
        return struct.unpack("<I", bytes(ctx))[0]

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> "CheckEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def kernel_engine(checked):
    """A function Request -> Verdict backed by the loaded check object."""
    engine = CheckEngine(build(checked, "check"))
    return engine.evaluate


_LINE_ANNOTATION = re.compile(r"@ [^:\s]+\.c:(\d+)")
_RULE = re.compile(r"/\* rule \d+: (\S+:\d+ .*?) \*/|\(([^()]*\.fpol:\d+ [^()]*)\)")


def rule_for_verifier_log(log: str, source: str) -> tuple[Optional[int], Optional[str], Optional[str]]:
    """The generated C line the verifier stopped at, its text, and the rule behind it."""
    lines = source.splitlines()
    found = _LINE_ANNOTATION.findall(log)
    if not found:
        return None, None, None
    n = int(found[-1])
    text = lines[n - 1].strip() if 0 < n <= len(lines) else None
    for back in range(n - 1, -1, -1):
        m = _RULE.search(lines[back])
        if m:
            return n, text, m.group(1) or m.group(2)
    return n, text, None
