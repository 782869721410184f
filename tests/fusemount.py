"""Helpers for the real-mount tests: run `fpol mount` as a process, snapshot a tree, read
the audit log. A daemon runs in its own process so that a daemon crash ends its mount
(ENOTCONN) instead of hanging the test that is waiting on a FUSE request."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from fpol.runtime.mount import mount_entry, mount_state, umount

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MOUNT_CMD = [sys.executable, "-m", "fpol.runtime.mount"]


def missing() -> Optional[str]:
    """Why real mounts cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root (mount(2) needs CAP_SYS_ADMIN)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"cannot open /dev/fuse: {e.strerror}"
    return None


class Mount:
    """`fpol mount --foreground` in a child process, with its stderr in a file."""

    def __init__(self, policy: Path, source: Path, mountpoint: Path, audit: Path,
                 handler: Optional[str] = None, passthrough: bool = True,
                 extra_args: tuple[str, ...] = ()):
        self.policy, self.source, self.mnt, self.audit_path = policy, source, mountpoint, audit
        self.handler, self.passthrough = handler, passthrough
        self.extra_args = extra_args  # more `fpol mount` options, e.g. ("--owner-only",)
        self.proc: Optional[subprocess.Popen] = None
        self.err_path = audit.with_suffix(".stderr")
        self._audit_pos = 0

    def args(self, foreground: bool = True) -> list[str]:
        a = MOUNT_CMD + ["mount", str(self.policy), str(self.source), str(self.mnt),
                         "--audit", str(self.audit_path)]
        if foreground:
            a.append("--foreground")
        else:  # the daemon's log beside the audit log, not in /var/log/fpol
            a += ["--log", str(self.audit_path.with_suffix(".daemon.log"))]
        if self.handler:
            a += ["--handler", self.handler]
        if not self.passthrough:
            a.append("--no-passthrough")
        return a + list(self.extra_args)

    def start(self, timeout: float = 15.0) -> "Mount":
        if mount_entry(str(self.mnt)) is None:  # a dead mount there is fpol mount's to clear
            self.mnt.mkdir(parents=True, exist_ok=True)
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=err,
                                         cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while mount_entry(str(self.mnt)) is None or "passthrough" not in self.stderr():
            if self.proc.poll() is not None:
                raise RuntimeError(f"fpol mount exited {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fpol mount did not come up: {self.stderr()}")
            time.sleep(0.02)
        return self

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> int:
        """Unmount (whatever state the daemon is in) and reap it; returns its exit code."""
        if mount_entry(str(self.mnt)) is not None:
            with open(os.devnull, "w") as null:
                umount(str(self.mnt), err=null, lazy=True)
        rc = -1
        if self.proc is not None:
            try:
                rc = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        return rc

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def audit(self) -> list[dict]:
        """Audit records written since the last call."""
        with open(self.audit_path, "rb") as f:
            f.seek(self._audit_pos)
            data = f.read()
        self._audit_pos += len(data)
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]

    def path(self, rel: str) -> str:
        return os.path.join(self.mnt, rel.lstrip("/"))

    def backing(self, rel: str) -> str:
        return os.path.join(self.source, rel.lstrip("/"))


def snapshot(root) -> dict:
    """Everything a denied op could change: names, types, sizes, modes, owners, mtimes,
    link counts, contents (hash), symlink targets, extended attributes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            p = os.path.join(dirpath, name) if name else dirpath
            if not name and dirpath != str(root):
                continue
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            else:
                content = None
            try:
                xattrs = sorted((n, os.getxattr(p, n, follow_symlinks=False))
                                for n in os.listxattr(p, follow_symlinks=False))
            except OSError:
                xattrs = None
            out[os.path.relpath(p, root)] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                None if stat.S_ISDIR(st.st_mode) else st.st_size, st.st_mtime_ns,
                None if stat.S_ISDIR(st.st_mode) else st.st_nlink, content, xattrs)
    return out


def errno_of(fn, *args, **kw) -> int:
    """0 if fn succeeds, else the OSError's errno (other exceptions propagate)."""
    try:
        result = fn(*args, **kw)
        if isinstance(result, int) and fn is os.open:
            os.close(result)
        return 0
    except OSError as e:
        return e.errno


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


__all__ = ["Mount", "snapshot", "errno_of", "missing", "mount_state", "wait_gone", "EXAMPLES",
           "ROOT", "MOUNT_CMD"]
