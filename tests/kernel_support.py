"""What kernel tests need, and a skip that names what is missing (never a silent pass)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TCP_CC = os.path.join(HERE, "data", "tcp_cc.bpf.c")


def require_bpf() -> None:
    """Kernel tests run as root with clang and libbpf; CI has all three."""
    if os.geteuid() != 0:
        pytest.skip("not root: loading BPF programs needs CAP_BPF")
    if not shutil.which(os.environ.get("CLANG", "clang")):
        pytest.skip("clang not installed")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("no kernel BTF (/sys/kernel/btf/vmlinux)")


# --- the struct_ops loader, on a struct_ops type this kernel has (tcp_congestion_ops) --------
# Used by test_kernel.py (attach, pin, status, unload) and test_faults.py (failures).

@pytest.fixture(scope="module")
def tcp_cc_object(tmp_path_factory):
    """tests/data/tcp_cc.bpf.c built: two instances, fpoltest_1 and fpoltest_2."""
    require_bpf()
    from fpol.compiler.clang import CFLAGS, find_clang, include_flags

    out = str(tmp_path_factory.mktemp("tcpcc") / "tcp_cc.bpf.o")
    subprocess.run([find_clang(), *CFLAGS, *include_flags(), "-c", TCP_CC, "-o", out], check=True)
    return out


def registered_cc() -> set[str]:
    """The TCP congestion controls registered in the kernel (where the instances show)."""
    with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
        return set(f.read().split())


@pytest.fixture
def pin_root():
    """A private pin root beside /sys/fs/bpf/fpol; whatever a test leaves there is unloaded."""
    from fpol.runtime import loader

    root = os.path.join(os.path.dirname(loader.PIN_ROOT), f"fpol-test-{os.getpid()}")
    yield root
    for l in loader.status(root):
        loader.unload(l.policy, root)
    if os.path.isdir(root):
        os.rmdir(root)
