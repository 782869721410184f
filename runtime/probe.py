"""What this machine supports (`fpol doctor`): one finding per line, with what follows."""

from __future__ import annotations

import gzip
import os
import platform
import shutil
from dataclasses import dataclass
from typing import Optional

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


@dataclass
class Finding:
    what: str
    ok: Optional[bool]  # None: unknown
    detail: str
    follows: str


def _caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _kernel_config(option: str) -> Optional[str]:
    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                for line in f:
                    if line.startswith(option + "="):
                        return line.strip().split("=", 1)[1]
            return "n"
        except OSError:
            continue
    return None


def fuse_ops_abi() -> Optional[str]:
    """`v4`, `v3`, or None when the kernel has no struct fuse_ops."""
    from .btf import struct_has_member

    has_default = struct_has_member("/sys/kernel/btf/vmlinux", "fuse_ops", "default_filter")
    if has_default is None:
        return None
    return "v4" if has_default else "v3"


def task_credentials() -> Optional[bool]:
    """Can fuse-bpf programs read who is asking (subject conditions, LANGUAGE.md §6)? They
    use bpf_get_current_task_btf, which the kernel's base helper set (what fuse_ops
    programs get) has only on kernels built with CONFIG_BPF_EVENTS and for loaders with
    CAP_PERFMON; a SEC("syscall") program gets the same base set, so libbpf's probe of it
    answers for fuse_ops too. None when it cannot tell (no libbpf, no BPF rights)."""
    try:
        from . import libbpf

        return libbpf.probe_helper(libbpf.BPF_PROG_TYPE_SYSCALL,
                                   libbpf.BPF_FUNC_GET_CURRENT_TASK_BTF)
    except Exception:  # LibbpfMissing, or a libbpf without the probe
        return None


def credentials_for_load(explicit: Optional[str]) -> tuple[str, str]:
    """Where subject conditions are decided when loading on this machine: `explicit` if the
    user chose, else the programs when they can read credentials (or it is unknown: a load
    that cannot then fails and says so), else the daemon. With a line that says why."""
    if explicit:
        return explicit, f"--credentials {explicit}"
    if task_credentials() is False:
        return "daemon", ("the kernel does not let BPF programs call bpf_get_current_task_btf "
                          "(CONFIG_BPF_EVENTS, CAP_PERFMON): ops whose decision depends on "
                          "who is asking go to the daemon")
    return "kernel", "the programs read the requester's fsuid and fsgid"


def findings() -> list[Finding]:
    out = [Finding("kernel", True, platform.release(), "")]
    btf = os.path.exists("/sys/kernel/btf/vmlinux")
    out.append(Finding("BTF", btf, "/sys/kernel/btf/vmlinux" if btf else "missing",
                       "struct_ops types can be checked" if btf else
                       "struct_ops cannot be loaded; the check object still can"))
    abi = fuse_ops_abi() if btf else None
    out.append(Finding("fuse_ops", abi is not None,
                       f"struct fuse_ops present ({abi})" if abi else "no struct fuse_ops in kernel BTF",
                       f"fpol load attaches {abi} policies" if abi else
                       "fuse-bpf is not in this kernel: `fpol load` is unavailable; verify, "
                       "explain/test --engine kernel and mount (daemon enforcement) work"))
    caps = _caps()
    cap_bpf = bool(caps >> CAP_BPF & 1) or bool(caps >> CAP_SYS_ADMIN & 1)
    out.append(Finding("CAP_BPF", cap_bpf, "yes" if cap_bpf else "no",
                       "BPF programs can be loaded" if cap_bpf else
                       "run as root (or with CAP_BPF and CAP_PERFMON) for verify and --engine kernel"))
    from .loader import bpffs_mounted

    fs = bpffs_mounted()
    out.append(Finding("bpffs", fs, "/sys/fs/bpf" if fs else "not mounted",
                       "loaded policies can be pinned" if fs else "mount -t bpf bpf /sys/fs/bpf"))
    creds = task_credentials() if cap_bpf else None
    out.append(Finding("task credentials", creds,
                       {True: "bpf_get_current_task_btf callable",
                        False: "bpf_get_current_task_btf refused",
                        None: "unknown"}[creds],
                       "fuse-bpf programs decide `by uid/gid` rules themselves" if creds else
                       "`by uid/gid` decisions go to the daemon (--credentials daemon)"
                       if creds is False else "needs CAP_BPF and CAP_PERFMON to probe"))
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
        os.close(fd)
        fuse, detail = True, "/dev/fuse opens"
    except OSError as e:
        fuse, detail = False, f"/dev/fuse: {e.strerror}"
    out.append(Finding("/dev/fuse", fuse, detail,
                       "fpol mount works" if fuse else "fpol mount is unavailable"))
    pt = _kernel_config("CONFIG_FUSE_PASSTHROUGH")
    out.append(Finding("FUSE passthrough", None if pt is None else pt == "y",
                       "CONFIG_FUSE_PASSTHROUGH=" + (pt or "unknown"),
                       "allowed opens bypass the daemon" if pt == "y" else
                       "reads and writes go through the daemon (slower)"))
    try:
        from fpol.compiler.clang import clang_version, find_clang

        clang = find_clang()
        out.append(Finding("clang", True, f"{clang} {clang_version(clang)}", "policies compile"))
    except Exception as e:  # ToolMissing
        out.append(Finding("clang", False, str(e), "fpol compile, verify and --engine kernel need it"))
    try:
        from . import libbpf

        out.append(Finding("libbpf", True, libbpf.version(), "objects load through ctypes"))
    except Exception as e:
        out.append(Finding("libbpf", False, str(e), "install libbpf1"))
    bpftool = shutil.which("bpftool")
    out.append(Finding("bpftool", bool(bpftool), bpftool or "not found",
                       "optional: inspect objects and maps" if bpftool else "optional"))
    return out
