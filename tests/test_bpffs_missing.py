"""`fpol load` on a machine where bpffs is not mounted (issue 11): it mounts bpffs at
/sys/fs/bpf itself, as bpftool does, says so, and loads.

The machine's own mounts are never touched: the load runs in a private mount namespace
(`unshare -m`) where /sys/fs/bpf is unmounted first (if it was mounted). Since this kernel
has no struct fuse_ops, the command's own path is run on tcp_congestion_ops (the fixture
of tests/kernel_support.py, built with instance names of its own) with a private pin root, and unloaded before the namespace ends
(if the helper dies, the namespace's bpffs goes with it, and so do the pins).

Needs root, clang, kernel BTF and unshare; skips naming what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from kernel_support import TCP_CC, registered_cc, require_bpf
from fusemount import ROOT

BPF = "/sys/fs/bpf"
NAME = "fpolnobpffs"  # not tests/data/tcp_cc.bpf.c's fpoltest: other tests load that one


@pytest.fixture(scope="module")
def own_tcp_cc_object(tmp_path_factory):
    """tests/data/tcp_cc.bpf.c with instances of its own name (fpolnobpffs_1, _2), so a
    test_kernel.py run at the same moment cannot take them."""
    require_bpf()
    from fpol.compiler.clang import CFLAGS, find_clang, include_flags

    base = tmp_path_factory.mktemp("nobpffs")
    src = base / "tcp_cc.bpf.c"
    with open(TCP_CC) as f:
        src.write_text(f.read().replace("fpoltest", NAME))
    out = str(base / "tcp_cc.bpf.o")
    subprocess.run([find_clang(), *CFLAGS, *include_flags(), "-c", str(src), "-o", out],
                   check=True)
    return out

# Run inside the namespace: unmount bpffs, run `fpol load` (cli.main) with the load pointed
# at tcp_congestion_ops and a private pin root, then unload; print what was seen as JSON.
INSIDE = textwrap.dedent(r"""
    import contextlib, io, json, os, subprocess, sys
    obj, pin_root = sys.argv[1], sys.argv[2]

    def bpffs_at(path):
        with open("/proc/self/mounts") as f:
            return [l.split()[1] for l in f if l.split()[2] == "bpf" and l.split()[1] == path]

    out = {}
    while bpffs_at("/sys/fs/bpf"):
        subprocess.run(["umount", "/sys/fs/bpf"], check=True)
    out["before"] = bpffs_at("/sys/fs/bpf")
    from fpol import cli
    from fpol.runtime import loader
    real_load = loader.load
    loader.preflight = lambda struct_name: None
    loader.load = lambda o, name, *rest, **kw: real_load(o, name, "tcp_congestion_ops", pin_root)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            out["rc"] = cli.main(["load", obj])
        except SystemExit as e:
            out["rc"] = e.code
    out["stdout"], out["stderr"] = stdout.getvalue(), stderr.getvalue()
    out["after"] = bpffs_at("/sys/fs/bpf")
    out["loaded"] = [l.instances for l in loader.status(pin_root)]
    for l in loader.status(pin_root):
        loader.unload(l.policy, pin_root)
    if os.path.isdir(pin_root):
        os.rmdir(pin_root)
    print(json.dumps(out))
""")


def host_bpffs() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [l for l in f if l.split()[2] == "bpf"]


def test_fpol_load_mounts_bpffs_where_it_is_missing(own_tcp_cc_object):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare (util-linux) to make a private mount namespace")
    before = host_bpffs()
    pin_root = os.path.join(BPF, f"fpol-test-nobpffs-{os.getpid()}")
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", INSIDE,
         own_tcp_cc_object, pin_root],
        capture_output=True, timeout=120, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr.decode()
    seen = json.loads(proc.stdout.decode().splitlines()[-1])
    assert seen["before"] == [], "bpffs was still mounted in the namespace"
    assert seen["rc"] == 0, f"fpol load failed: {seen['stderr']}"
    assert seen["after"] == [BPF], "fpol load did not mount bpffs at /sys/fs/bpf"
    said = (seen["stderr"] + seen["stdout"]).lower()
    assert "bpffs" in said and BPF in said and "mount" in said, \
        f"fpol load did not say it mounted bpffs: {seen['stderr']!r} {seen['stdout']!r}"
    assert seen["loaded"] == [[f"{NAME}_1", f"{NAME}_2"]], seen["loaded"]
    # Nothing left behind: the machine's mounts are as they were, the instances are gone.
    assert host_bpffs() == before
    assert not {f"{NAME}_1", f"{NAME}_2"} & registered_cc()
