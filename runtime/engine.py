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
from fpol.compiler import abi
from fpol.compiler.abi import MAX_DEPTH, NAME_SLOT
from fpol.compiler.lower import OP_NUMBER

from . import libbpf
from .objects import Built, build
from fpol.compiler.errors import EnvironmentProblem, UsageProblem

RESULT_SIZE = abi.size(abi.RESULT)


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
    values = {
        "op": OP_NUMBER[req.op], "flags": req.flags, "mask": req.mask,
        "depth": [len(p) for p in paths],
        "dir_nodeid": [1 if len(p) == 1 else 0 for p in paths],  # the root's children: 1
        "len": [len(p[i]) if i < len(p) else 0 for p in paths for i in range(MAX_DEPTH)],
        "name": b"".join((p[i] if i < len(p) else b"").ljust(NAME_SLOT, b"\0")
                         for p in paths for i in range(MAX_DEPTH)),
        "uid": req.uid, "gid": req.gid,
    }
    fields = abi.REQUEST + (abi.SUBJECT if subjects else ())
    return abi.pack_struct(fields, values)


def verdict_from_word(req: Request, word: int, classes: tuple[int, ...] = ()) -> Verdict:
    d = abi.unpack(word)
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
            if not e.verifier_log:
                # Asked for statistics only, the verifier kept its reasons to itself: load
                # again as libbpf does by default, which prints the whole log on a refusal.
                with libbpf.BpfObject(built.path) as again:
                    try:
                        again.load()
                    except libbpf.LibbpfError as full:
                        raise full from None
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
        result = abi.unpack_struct(abi.RESULT, bytes(ctx))
        return verdict_from_word(req, result["word"], result["cls"])

    HOOK_KINDS = ("object", "fsync", "lookup", "lookup_post", "create", "remove", "rename",
                  "rename2", "link", "cfr")

    def hook(self, kind: str, cls: int, op: str = "lookup", flags: int = 0, opcode: int = 0,
             nodeid: int = 0, newdir: int = 0, names: tuple[bytes, ...] = (),
             uid: int = 0, gid: int = 0) -> tuple[int, int, int]:
        """What one fuse_ops program reading class `cls` returns for one call made by
        `uid`, `gid`: (return code as u32, decision word, child class)."""
        names = tuple(names) + (b"",) * (2 - len(names))
        values = {"hook": self.HOOK_KINDS.index(kind), "cls": cls, "op": OP_NUMBER[op],
                  "flags": flags, "opcode": opcode, "nodeid": nodeid, "newdir": newdir,
                  "len": [len(n) for n in names],
                  "name": b"".join(n.ljust(NAME_SLOT, b"\0") for n in names),
                  "uid": uid, "gid": gid}
        fields = abi.HOOK_REQUEST + (abi.HOOK_SUBJECT if self.subjects else ())
        self.obj.map("fpol_hook_requests").update(struct.pack("<I", 0), abi.pack_struct(fields, values))
        ctx = bytearray(abi.size(abi.HOOK_RESULT))
        ret = self.obj.program("fpol_hook").test_run(ctx)
        if ret != 0:
            raise RuntimeError(f"fpol_hook returned {ret}")
        result = abi.unpack_struct(abi.HOOK_RESULT, bytes(ctx))
        return result["code"], result["word"], result["child"]

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
