"""Kernel tests: the check objects verify in this kernel, and the kernel engine
(the generated logic run through BPF_PROG_TEST_RUN) decides what the reference
evaluator decides — exactly, or more strictly where the fuse-bpf realisation
cannot see what the evaluator sees, which each such case must say.
"""

from __future__ import annotations

import glob
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from fpol.compiler.cases import parse_cases
from fpol.compiler.driver import check, check_file
from fpol.compiler.evaluate import Evaluator

from kernel_support import pin_root, tcp_cc_object  # noqa: F401 (fixtures, shared with test_faults.py)
from kernel_support import registered_cc as _registered, require_bpf
from oracles import agree, engine_for
from strategies import policies, requests, searching

HERE = os.path.dirname(__file__)
EXAMPLES = sorted(glob.glob(os.path.join(HERE, "..", "examples", "*.fpol")))
CASE_POLICIES = sorted(p for p in glob.glob(os.path.join(HERE, "cases", "*.fpol"))
                       if check_file(p).ok)


@pytest.fixture(autouse=True)
def _bpf():
    require_bpf()


@pytest.mark.parametrize("path", EXAMPLES + CASE_POLICIES, ids=os.path.basename)
def test_every_policy_verifies_in_this_kernel(path):
    checked = check_file(path).require()
    with engine_for(checked) as engine:
        stats = dict(engine.report.programs)
    # Policies with subject conditions also carry the credential reading of the
    # struct_ops programs, as fpol_whoami, so that this kernel verifies it too.
    want = {"fpol_check", "fpol_hook"} | ({"fpol_whoami"} if len(checked.classes.subjects) > 1
                                          else set())
    assert set(stats) == want
    assert all(s is not None and s.insns_processed > 0 for s in stats.values())


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_kernel_engine_agrees_on_every_example_case(path):
    checked = check_file(path).require()
    with open(path[:-len(".fpol")] + ".cases", encoding="utf-8") as f:
        cases = parse_cases(f.read())
    evaluator = Evaluator(checked.policy)
    outcomes = {"same": 0, "stricter": 0}
    problems = []
    with engine_for(checked) as engine:
        for case in cases:
            expected, got = evaluator.evaluate(case.request), engine.evaluate(case.request)
            verdict = agree(expected, got)
            if verdict == "DIFFERENT":
                problems.append(f"line {case.line} {case.text}: evaluator {expected.decision.short()}"
                                f", kernel {got.decision.short()}")
            else:
                outcomes[verdict] += 1
                if verdict == "stricter":
                    # Said explicitly, per case: which refusal the realisation made.
                    assert got.decision.errno in ("EXDEV", "EACCES") or got.decision.complained
    assert not problems, "\n".join(problems)
    assert outcomes["same"] >= len(cases) * 0.6


# --- generated policies and requests ------------------------------------------------------

@searching(12, deadline=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(policy=policies(min_rules=1), reqs=st.lists(requests(), min_size=200, max_size=200))
def test_generated_policies_agree_with_the_evaluator(policy, reqs):
    # Policies with subject conditions, requests by generated requesters (tests/strategies.py).
    # 200 requests: at 250, with the requester drawn too, hypothesis overruns its buffer and
    # generates few examples, slowly.
    checked = check(policy.encode(), "gen.fpol")
    if not checked.ok:
        return  # generated ties and the like are the front end's business (tested elsewhere)
    evaluator = Evaluator(checked.policy)
    with engine_for(checked) as engine:
        for req in reqs:
            expected, got = evaluator.evaluate(req), engine.evaluate(req)
            assert agree(expected, got) != "DIFFERENT", (
                f"{policy}\n{req}: evaluator {expected.decision.short()}, kernel {got.decision.short()}")


# --- complain mode: a complained deny at one end of a two-path op -------------------------
# Found by a random search of the property above (docs/fuzzing.md, Findings: "A complained
# deny lost to userspace at the other end"). The evaluator judges a request in complain mode
# as if enforced, then allows and audits a deny: a deny at one end beats `to userspace` at the
# other. The generated fpol_stricter ranked the complained end (an allow word with the
# complained flag) below userspace, so the kernel redirected the request. Fixed in
# templates/logic.h.j2 (fpol_strictness: a complained word ranks as a deny), and likewise in
# decide.stricter, which the daemon combines a two-path op's ends with.

COMPLAINED_ENDS = [
    ("mode complain\nredirect all to userspace\ndeny delete\n", "rename", (b"x",), (b"y",)),
    ("mode complain\nredirect all to userspace\ndeny delete\n", "rename", (b"a", b"x"), (b"b", b"y")),
    ("mode complain\nredirect all to userspace\ndeny create\n", "rename", (b"y",), (b"a", b"x")),
    ("mode complain\nredirect all to userspace\ndeny create\n", "link", (b"a", b"x"), (b"a", b"y")),
    # more than one class, the destination known (both at the root, one class)
    ("mode complain\nredirect all to userspace\ndeny delete\ndeny read under /z\n", "rename",
     (b"x",), (b"y",)),
]


@pytest.mark.parametrize("text, op, src, dst", COMPLAINED_ENDS,
                         ids=[f"{i}-{c[1]}" for i, c in enumerate(COMPLAINED_ENDS)])
def test_a_complained_deny_at_one_end_outranks_userspace_at_the_other(text, op, src, dst):
    from fpol.compiler.evaluate import Request

    checked = check(text.encode(), "complain.fpol").require()
    req = Request(op, src, dst)
    expected = Evaluator(checked.policy).evaluate(req)
    d = expected.decision
    assert (d.kind, d.audit, d.complained) == ("allow", True, True)
    with engine_for(checked) as engine:
        got = engine.evaluate(req)
    assert agree(expected, got) != "DIFFERENT", f"kernel {got.decision.short()}"


# --- verifier failures map back to the policy ---------------------------------------------

def test_verifier_log_maps_to_the_rule():
    from fpol.runtime.engine import rule_for_verifier_log

    source = "\n".join([
        "int x;",
        "/* rule 0: p.fpol:3 deny write under /secret */",
        "\tif (a) return b;",
        "\tr = fpol_rows[row][slot];",
    ])
    log = "17: (61) r1 = *(u32 *)(r2 +8)\n; r = fpol_rows[row][slot]; @ p.check.bpf.c:4\n" \
          "R2 unbounded memory access\n"
    line, text, rule = rule_for_verifier_log(log, source)
    assert (line, text) == (4, "r = fpol_rows[row][slot];")
    assert rule == "p.fpol:3 deny write under /secret"


REJECTED_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
const volatile __u32 fpol_rows[4] = { 1, 2, 3, 4 };
/* rule 0: p.fpol:3 deny write under /x */
SEC("syscall")
int fpol_check(void *ctx)
{
	__u32 slot = bpf_get_prandom_u32();
	return fpol_rows[slot];
}
"""


def test_verifier_rejection_says_the_verifiers_reason(tmp_path):
    """The error's one line carries the verifier's own reason, not just the errno, and
    the log maps back to the generated line and the rule behind it (issue 13)."""
    require_bpf()
    from fpol.compiler.clang import compile_c
    from fpol.runtime import libbpf
    from fpol.runtime.engine import rule_for_verifier_log

    path = str(tmp_path / "rejected.o")
    compile_c(REJECTED_C, path, "rejected")
    with pytest.raises(libbpf.LibbpfError) as err:
        with libbpf.BpfObject(path) as obj:
            obj.load()
    e = err.value
    assert e.reason.startswith("verifier: R") and "unbounded memory access" in e.reason, e.reason
    assert "(program fpol_check)" in e.reason
    assert e.reason in str(e).splitlines()[0]
    line, text, rule = rule_for_verifier_log(e.verifier_log, REJECTED_C)
    assert text == "return fpol_rows[slot];" and rule == "p.fpol:3 deny write under /x"


def test_verifier_reason_is_the_line_that_says_why():
    from fpol.runtime.libbpf import verifier_reason

    log = ("func#0 @0\n0: R1=ctx() R10=fp0\n; x @ p.c:3\n0: (85) call bpf_get_prandom_u32#7\n"
           "jump out of range from insn 637 to -23583\n"
           "processed 0 insns (limit 1000000) max_states_per_insn 0 total_states 0\n")
    assert verifier_reason(log) == "jump out of range from insn 637 to -23583"
    assert verifier_reason("") == ""


# --- the struct_ops loader, on a struct_ops type this kernel has -------------------------

def test_load_attach_pin_status_unload(tcp_cc_object, pin_root):
    from fpol.runtime import loader

    loaded = loader.load(tcp_cc_object, "fpoltest", "tcp_congestion_ops", pin_root)
    assert loaded.instances == ["fpoltest_1", "fpoltest_2"]
    assert {"fpoltest_1", "fpoltest_2"} <= _registered()
    assert sorted(os.listdir(loaded.pin_dir)) == ["fpoltest_1", "fpoltest_2"]
    # The pins keep the instances after this process's handles are gone.
    out = subprocess.run(["python3", "-c", "print(open('/proc/sys/net/ipv4/"
                          "tcp_available_congestion_control').read())"], capture_output=True, text=True)
    assert "fpoltest_1" in out.stdout
    assert [l.policy for l in loader.status(pin_root)] == ["fpoltest"]
    with pytest.raises(loader.LoadRefused, match="already loaded"):
        loader.load(tcp_cc_object, "fpoltest", "tcp_congestion_ops", pin_root)
    assert loader.unload("fpoltest", pin_root) == ["fpoltest_1", "fpoltest_2"]
    assert not ({"fpoltest_1", "fpoltest_2"} & _registered())
    assert loader.status(pin_root) == []


def test_fpol_load_exits_3_without_fuse_ops_and_leaves_nothing(tmp_path):
    from fpol.runtime.probe import fuse_ops_abi

    if fuse_ops_abi() is not None:
        pytest.skip("this kernel has struct fuse_ops (fuse-bpf): the refusal path does not apply")
    before = set(os.listdir("/sys/fs/bpf"))
    proc = subprocess.run(["fpol", "load", os.path.join(HERE, "..", "examples", "secrets.fpol")],
                          capture_output=True, text=True)
    assert proc.returncode == 3
    assert "no `struct fuse_ops`" in proc.stderr and "fpol mount" in proc.stderr
    assert set(os.listdir("/sys/fs/bpf")) == before
    assert not os.path.exists("/sys/fs/bpf/fpol/secrets")


def test_struct_ops_object_opens_but_cannot_load_here(tmp_path):
    """On this kernel the struct_ops object is well-formed for libbpf (it opens, its maps are
    STRUCT_OPS) and fails to load only for want of `struct fuse_ops` in kernel BTF."""
    from fpol.runtime import libbpf
    from fpol.runtime.objects import build
    from fpol.runtime.probe import fuse_ops_abi

    checked = check_file(EXAMPLES[0]).require()
    built = build(checked, "struct_ops")
    with libbpf.BpfObject(built.path) as obj:
        maps = [m for m in obj.maps() if m.type == libbpf.BPF_MAP_TYPE_STRUCT_OPS]
        assert len(maps) == len(checked.classes.classes)
        if fuse_ops_abi() is None:
            with pytest.raises(libbpf.LibbpfError) as err:
                obj.load()
            # Refused for want of fuse-bpf: its kfuncs or its struct, whichever libbpf meets first.
            assert ("fuse_ops is not found in kernel BTF" in err.value.log
                    or "'bpf_fuse_get_ro_dynptr': not found" in err.value.log), err.value.log


def test_names_a_program_cannot_read_are_denied_never_allowed():
    """A name over 255 bytes (the kernel never sends one, but a program must not trust
    that) is denied with ENAMETOOLONG by every namespace hook, even where all is allowed."""
    import struct

    from fpol.runtime.engine import NAME_SLOT, OP_NUMBER
    from fpol.compiler.abi import unpack

    checked = check("audit read named \"*.log\"\n", "t.fpol").require()
    with engine_for(checked) as engine:
        code, word, _ = engine.hook("lookup", 0, names=(b"x" * 255,))
        assert unpack(word)["kind"] == "allow" and code == 0  # the longest real name
        for length in (256, 1000, 0xFFFFFFFF):
            for kind, op in (("lookup", "lookup"), ("create", "create"), ("remove", "unlink"),
                             ("rename", "rename")):
                req = struct.pack("<6I2Q2I", engine.HOOK_KINDS.index(kind), 0, OP_NUMBER[op],
                                  0o101, 0, 0, 1, 1, length, length)
                req += (b"x" * NAME_SLOT) * 2
                engine.obj.map("fpol_hook_requests").update(struct.pack("<I", 0), req)
                ctx = bytearray(12)
                assert engine.obj.program("fpol_hook").test_run(ctx) == 0
                code, word, _ = struct.unpack("<3I", bytes(ctx))
                d = unpack(word)
                assert (d["kind"], d["errno"]) == ("deny", "ENAMETOOLONG"), (kind, length, d)
                assert code == (-36) & 0xFFFFFFFF
