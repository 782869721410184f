"""`fpol mount` without --foreground (issue 11): it returns once the mount is ready and leaves
nothing holding the caller's stdout and stderr; the daemon logs to its own file, which
`fpol status` names; `fpol umount` stops it.

Needs root and /dev/fuse (skips naming what is missing). Every mount made here is removed,
and every daemon started here is gone, even when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusemount import ROOT, missing, wait_gone
from fpol.runtime.mount import mount_entry, umount

_MISSING = missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"real FUSE mounts: {_MISSING}")

FPOL = [sys.executable, "-m", "fpol"]


@pytest.fixture
def setup(tmp_path):
    """A policy, a source with one file, an empty mountpoint, a log path; afterwards no
    mount is left at the mountpoint and no daemon this test started is alive."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "hello.txt").write_text("hello\n")
    (tmp_path / "mnt").mkdir()
    policy = tmp_path / "p.fpol"
    policy.write_text("policy bg\ndefault allow\ndeny write under /ro with EROFS\n")
    pids: list[int] = []
    yield tmp_path, policy, pids
    mnt = str(tmp_path / "mnt")
    if mount_entry(mnt) is not None:
        with open(os.devnull, "w") as null:
            umount(mnt, err=null, lazy=True)
    for pid in pids:
        if not wait_gone(pid, 5):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5)
    assert mount_entry(mnt) is None


def mount_args(tmp_path: Path, policy: Path) -> list[str]:
    return FPOL + ["mount", str(policy), str(tmp_path / "src"), str(tmp_path / "mnt"),
                   "--log", str(tmp_path / "daemon.log")]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_background_mount_releases_stdout_and_stderr(setup):
    tmp_path, policy, pids = setup
    started = time.monotonic()
    # Both pipes must reach EOF: nothing (the daemon included) may keep either open.
    proc = subprocess.run(mount_args(tmp_path, policy), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=20, cwd=str(ROOT))
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err
    pid = int(out.strip())  # the daemon's pid, and nothing else, on stdout
    pids.append(pid)
    assert time.monotonic() - started < 20
    # Ready when it returned: the mount serves at once, and the daemon is alive.
    assert mount_entry(str(tmp_path / "mnt")) is not None
    assert (tmp_path / "mnt" / "hello.txt").read_text() == "hello\n"
    assert alive(pid)
    # The daemon holds no descriptor of the caller's but its log and /dev/null.
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        assert not target.startswith(("pipe:", "/dev/pts", "/dev/tty")), (fd, target)
    # Its messages go to its log, which the caller was told about.
    assert str(tmp_path / "daemon.log") in err
    # `fpol umount` stops it.
    u = subprocess.run(FPOL + ["umount", str(tmp_path / "mnt")], capture_output=True,
                       timeout=20, cwd=str(ROOT))
    assert u.returncode == 0, u.stderr.decode()
    assert mount_entry(str(tmp_path / "mnt")) is None
    assert wait_gone(pid), "the daemon is still running after fpol umount"
    assert "fpol mount:" in (tmp_path / "daemon.log").read_text()


def test_background_mount_in_a_pipeline_returns(setup):
    """`fpol mount ... 2>&1 | cat` ends when the mount is ready, not at unmount."""
    tmp_path, policy, pids = setup
    cmd = " ".join(f"'{a}'" for a in mount_args(tmp_path, policy)) + " 2>&1 | cat"
    proc = subprocess.run(["sh", "-c", cmd], stdout=subprocess.PIPE, timeout=20, cwd=str(ROOT))
    lines = proc.stdout.decode().splitlines()
    assert proc.returncode == 0, lines
    pid = int(lines[-1])
    pids.append(pid)
    assert alive(pid) and mount_entry(str(tmp_path / "mnt")) is not None
    assert os.listdir(tmp_path / "mnt") == ["hello.txt"]
    u = subprocess.run(FPOL + ["umount", str(tmp_path / "mnt")], capture_output=True,
                       timeout=20, cwd=str(ROOT))
    assert u.returncode == 0, u.stderr.decode()
    assert wait_gone(pid)


def test_background_daemon_logs_to_its_file_and_status_says_where(setup):
    tmp_path, policy, pids = setup
    log = tmp_path / "daemon.log"
    proc = subprocess.run(mount_args(tmp_path, policy) + ["--audit", str(tmp_path / "a.log")],
                          capture_output=True, timeout=20, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr.decode()
    pids.append(int(proc.stdout.decode().strip()))
    st = subprocess.run(FPOL + ["status"], capture_output=True, timeout=20, cwd=str(ROOT))
    line = [l for l in st.stdout.decode().splitlines() if str(tmp_path / "mnt") in l]
    assert line, st.stdout.decode()
    assert str(log) in line[0], f"fpol status does not say where the daemon logs: {line[0]}"
    u = subprocess.run(FPOL + ["umount", str(tmp_path / "mnt")], capture_output=True,
                       timeout=20, cwd=str(ROOT))
    assert u.returncode == 0, u.stderr.decode()
    assert wait_gone(pids[0])
    text = log.read_text()
    assert "fpol mount:" in text and str(tmp_path / "mnt") in text
