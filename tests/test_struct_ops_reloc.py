"""Every generated struct_ops object gets past libbpf's open and struct_ops relocation on
this kernel, and fails only where fuse-bpf itself is missing.

libbpf relocates a `.struct_ops` section at open: each member's function pointer becomes
the program it names, and a program's expected attach type becomes that member's index.
One program named by two members is refused there ("struct_ops reloc ...: cannot use prog
... for func ptr ..."), as the fuse-bpf kernel refuses it too; a mainline kernel shows that
refusal as well as a fuse-bpf one does. So this test opens the object of every example and
every case policy under tests/cases that checks, for both ABIs, then loads it: the load must
fail only for want of fuse-bpf (its kfuncs, or `struct fuse_ops` in kernel BTF), or succeed
on a kernel that has it.
"""

from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from fpol.compiler.driver import check_file
from kernel_support import require_bpf

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = sorted(glob.glob(os.path.join(HERE, "..", "examples", "*.fpol")))
CASES = sorted(p for p in glob.glob(os.path.join(HERE, "cases", "*.fpol")) if check_file(p).ok)
ABIS = ("v3", "v4")
# What libbpf says when the running kernel lacks fuse-bpf, whichever it meets first.
FUSE_BPF_MISSING = ("fuse_ops is not found in kernel BTF",
                    "'bpf_fuse_get_ro_dynptr': not found in kernel",
                    "'bpf_fuse_get_rw_dynptr': not found in kernel",
                    "'bpf_fuse_return_len': not found in kernel")


def _build(path: str, abi: str) -> str:
    from fpol.runtime.objects import build

    return build(check_file(path).require(), "struct_ops", abi=abi).path


@pytest.fixture(scope="module")
def objects():
    require_bpf()
    jobs = [(p, abi) for p in EXAMPLES + CASES for abi in ABIS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(lambda j: _build(*j), jobs))
    return dict(zip(jobs, paths))


def open_and_load(obj_path: str):
    """(None, None) if it loads; else (stage, libbpf's log) where stage is open or load."""
    from fpol.runtime import libbpf

    try:
        obj = libbpf.BpfObject(obj_path)
    except libbpf.LibbpfError as e:
        return "open", e.log
    with obj:
        try:
            obj.load()
        except libbpf.LibbpfError as e:
            return "load", e.log
    return None, None


@pytest.mark.parametrize("abi", ABIS)
@pytest.mark.parametrize("path", EXAMPLES + CASES, ids=os.path.basename)
def test_struct_ops_object_relocates_and_fails_only_for_want_of_fuse_bpf(objects, path, abi):
    from fpol.runtime.probe import fuse_ops_abi

    stage, log = open_and_load(objects[(path, abi)])
    relocs = [l for l in (log or "").splitlines() if "struct_ops reloc" in l and "cannot" in l]
    assert stage != "open", f"libbpf refused the object at open:\n{relocs or log[-2000:]}"
    if fuse_ops_abi() == abi:
        assert stage is None, log[-3000:]
        return
    assert stage == "load"
    assert any(s in log for s in FUSE_BPF_MISSING), \
        "the load failed for another reason than a missing fuse-bpf:\n" + log[-3000:]


def test_one_program_in_two_members_is_refused_at_open(tmp_path):
    """The refusal the test above guards against is visible on this kernel: a hand-written
    object whose one program fills two members of a struct_ops map fails at open."""
    require_bpf()
    from fpol.runtime import libbpf

    obj = two_member_object(tmp_path)
    with pytest.raises(libbpf.LibbpfError) as err:
        libbpf.BpfObject(obj)
    assert "cannot use prog shared_fn" in err.value.log


TWO_MEMBERS_C = r"""
/* One program in two members of a struct_ops map, of a type this kernel has
 * (tcp_congestion_ops): libbpf refuses it at open. */
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

struct sock;

struct tcp_congestion_ops {
	__u32 (*ssthresh)(struct sock *sk);
	void (*cong_avoid)(struct sock *sk, __u32 ack, __u32 acked);
	__u32 (*undo_cwnd)(struct sock *sk);
	char name[16];
};

SEC("struct_ops/ssthresh")
__u32 BPF_PROG(shared_fn, struct sock *sk)
{
	return 2;
}

SEC("struct_ops/cong_avoid")
void BPF_PROG(avoid_fn, struct sock *sk, __u32 ack, __u32 acked)
{
}

SEC(".struct_ops")
struct tcp_congestion_ops fpoltwo = {
	.ssthresh = (void *)shared_fn,
	.cong_avoid = (void *)avoid_fn,
	.undo_cwnd = (void *)shared_fn,
	.name = "fpoltwo",
};
"""


def two_member_object(tmp_path) -> str:
    import subprocess

    from fpol.compiler.clang import CFLAGS, find_clang, include_flags

    src = tmp_path / "two.bpf.c"
    src.write_text(TWO_MEMBERS_C)
    out = str(tmp_path / "two.bpf.o")
    subprocess.run([find_clang(), *CFLAGS, *include_flags(), "-c", str(src),
                    "-o", out], check=True)
    return out


# --- a refused object's error says why: libbpf's own line, naming program and member -----

def test_refused_object_error_names_program_and_member(tmp_path):
    require_bpf()
    from fpol.runtime import libbpf, loader

    obj = two_member_object(tmp_path)
    with pytest.raises(libbpf.LibbpfError) as err:
        loader.policy_name_of(obj)
    message = str(err.value)
    assert "cannot use prog shared_fn" in message and "func ptr undo_cwnd" in message, message
    assert err.value.reason.startswith("struct_ops reloc fpoltwo: cannot use prog shared_fn")


def test_fpol_load_of_a_refused_object_prints_libbpfs_reason(tmp_path, monkeypatch, capsys):
    require_bpf()
    from fpol import cli
    from fpol.runtime import loader

    obj = two_member_object(tmp_path)
    monkeypatch.setattr(loader, "preflight", lambda name: None)  # as on a fuse-bpf kernel
    status = cli.main(["load", obj])
    err = capsys.readouterr().err
    assert status != 0
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "cannot use prog shared_fn" in err and "func ptr undo_cwnd" in err, err
    assert "Traceback" not in err


def test_load_failure_of_a_missing_kfunc_names_it(tmp_path):
    """A load libbpf refuses (here: fuse-bpf's kfuncs are missing) carries the line naming
    what is missing, not only the errno."""
    require_bpf()
    from fpol.runtime import libbpf
    from fpol.runtime.probe import fuse_ops_abi

    if fuse_ops_abi() is not None:
        pytest.skip("this kernel has fuse-bpf: the secrets object loads")
    path = _build(os.path.join(HERE, "..", "examples", "secrets.fpol"), "v4")
    with libbpf.BpfObject(path) as obj:
        with pytest.raises(libbpf.LibbpfError) as err:
            obj.load()
    assert "bpf_fuse_get_" in str(err.value) or "fuse_ops is not found" in str(err.value), \
        str(err.value)
