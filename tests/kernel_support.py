"""What kernel tests need, and a skip that names what is missing (never a silent pass)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_bpf() -> None:
    """Kernel tests run as root with clang and libbpf; CI has all three."""
    if os.geteuid() != 0:
        pytest.skip("not root: loading BPF programs needs CAP_BPF")
    if not shutil.which(os.environ.get("CLANG", "clang")):
        pytest.skip("clang not installed")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("no kernel BTF (/sys/kernel/btf/vmlinux)")
