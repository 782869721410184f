"""`fpol mount` as a multi-user filesystem (issue 11): a differential test, several users.

The same syscall sequences run, step by step, as several unprivileged users at once (each a
child process under `setpriv --reuid/--regid`, tests/multiuser_ops.py) against an fpol mount
of a `default allow` policy and against a plain directory (the twin: a tree with the same
names, ownership and modes on the same filesystem, the oracle). After every step the results
must be identical: return value or errno and what the op observed (a stat through the
descriptor, contents, names); and the backing tree must equal the twin: names, types, modes,
owners, sizes, link counts, contents, symlink targets, and times (which of atime/mtime/ctime
changed, or equal an explicit value set by utimensat; never wall-clock values). At the end
of each case, what the mount shows (lstat through it) must equal the backing tree.

The users: a = 2001:2001 and b = 2002:2002, both also in group 3000; c = 2003:2003 in no
other group; root. No /etc/passwd entries are needed.

Hand-written cases name each behaviour of the issue (sticky and setgid directories, set-id
bits cleared on write and chown, umask, O_NOATIME, utimes with and without UTIME_NOW, ...);
each step also states the result POSIX gives on the plain directory, so a case cannot pass
vacuously. Generated sequences (seeded; FPOL_MULTIUSER_SEEDS=N runs N more random seeds)
mix the same ops over the same tree.

Needs root, /dev/fuse and setpriv; skips naming what is missing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from fusemount import Mount, missing

HERE = Path(__file__).resolve().parent
HELPER = HERE / "multiuser_ops.py"
SETPRIV = shutil.which("setpriv")

A, B, C, G = 2001, 2002, 2003, 3000  # users a, b, c; the group a and b share
USERS = {"a": (A, A, [G]), "b": (B, B, [G]), "c": (C, C, []), "root": (0, 0, None)}
T1 = 1_000_000_000_123_456_789  # explicit times set by utimensat (ns)
T2 = 1_111_111_111_000_000_000
EXPLICIT = {T1, T2}
COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # the clock inode times come from


def _python_for_users() -> Optional[str]:
    """A python an unprivileged user can run (pytest's may live under /root)."""
    for cand in (sys.executable, "/usr/bin/python3", "/bin/python3"):
        if cand and os.path.exists(cand) and _others_can_run(cand):
            return cand
    return None


def _others_can_run(path: str, bit: int = stat.S_IXOTH) -> bool:
    """Can a user who is neither owner nor in the group run (or with S_IROTH, read) path?"""
    p = os.path.realpath(path)
    if not os.stat(p).st_mode & bit:
        return False
    d = os.path.dirname(p)
    while d != "/":
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return False
        d = os.path.dirname(d)
    return True


def _why_not() -> Optional[str]:
    m = missing()
    if m:
        return f"real FUSE mounts: {m}"
    if SETPRIV is None:
        return "no setpriv (util-linux) to run steps as other users"
    if _python_for_users() is None:
        return "no python3 that an unprivileged user can execute"
    if not _others_can_run(str(HELPER), stat.S_IROTH):
        return f"{HELPER} is not readable by other users"
    return None


_MISSING = _why_not()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))
PY = _python_for_users()


# --- the tree both sides start from -------------------------------------------------------------

# (path, kind, mode, uid, gid, content or symlink target)
TREE = [
    ("pub", "dir", 0o1777, 0, 0, None),               # like /tmp
    ("pub/root-file", "file", 0o644, 0, 0, "root"),
    ("pub/a-file", "file", 0o644, A, A, "a-file"),
    ("pub/a-open", "file", 0o666, A, A, "a-open"),
    ("pub/b-file", "file", 0o644, B, B, "b-file"),
    ("pub/a-dir", "dir", 0o777, A, A, None),
    ("pub/a-link", "symlink", 0o777, A, A, "a-file"),
    ("plain", "dir", 0o777, 0, 0, None),              # world-writable, not sticky
    ("plain/a-file", "file", 0o644, A, A, "plain-a"),
    ("plain/b-file", "file", 0o666, B, B, "plain-b"),
    ("plain/root-secret", "file", 0o600, 0, 0, "root-secret"),
    ("shared", "dir", 0o2775, 0, G, None),            # setgid, group-writable
    ("shared/b-file", "file", 0o664, B, G, "shared-b"),
    ("shared/c-file", "file", 0o644, C, G, "shared-c"),  # c is not in the group
    ("open-sgid", "dir", 0o2777, 0, G, None),         # setgid, world-writable
    ("sticky-shared", "dir", 0o3775, 0, G, None),     # setgid + sticky, group-writable
    ("sticky-shared/a-file", "file", 0o664, A, G, "ss-a"),
    ("sticky-shared/b-file", "file", 0o664, B, G, "ss-b"),
    ("home-a", "dir", 0o755, A, A, None),
    ("home-a/secret", "file", 0o600, A, A, "secret-a"),
    ("home-a/suid", "file", 0o6755, A, G, "#!suid"),  # set-uid + set-gid + group exec
    ("home-a/sgid-nox", "file", 0o2664, A, G, "sgid-nox"),  # set-gid without group exec
    ("home-a/open-suid", "file", 0o6777, A, G, "open-suid"),  # anyone may write
    ("home-a/ro", "file", 0o444, A, A, "ro"),
    ("home-a/sub", "dir", 0o700, A, A, None),
    ("home-a/sub/f", "file", 0o644, A, A, "sub-f"),
    ("home-a/xonly", "dir", 0o711, A, A, None),
    ("home-a/xonly/f", "file", 0o644, A, A, "xonly-f"),
    ("home-b", "dir", 0o700, B, B, None),
    ("home-b/f", "file", 0o644, B, B, "home-b-f"),
    ("root-only", "dir", 0o700, 0, 0, None),
    ("root-only/f", "file", 0o644, 0, 0, "root-only-f"),
]


def build_tree(root: str) -> None:
    os.mkdir(root)
    os.chmod(root, 0o755)
    for path, kind, mode, uid, gid, content in TREE:
        p = os.path.join(root, path)
        if kind == "dir":
            os.mkdir(p)
        elif kind == "file":
            with open(p, "w") as f:
                f.write(content)
        elif kind == "symlink":
            os.symlink(content, p)
        os.lchown(p, uid, gid)
        if kind != "symlink":
            os.chmod(p, mode)  # after the chown, which clears set-id bits


def lstat_view(st: os.stat_result) -> tuple:
    d = stat.S_ISDIR(st.st_mode)
    return (stat.filemode(st.st_mode), st.st_uid, st.st_gid,
            None if d else st.st_size, None if d else st.st_nlink)


def snapshot(root: str) -> dict:
    """path -> (static fields, (atime, mtime, ctime) in ns)"""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ([""] if dirpath == root else []) + dirnames + filenames:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()[:16]
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            else:
                content = None
            out[os.path.relpath(p, root)] = (
                lstat_view(st) + (content,), (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns))
    return out


def time_class(t: int, before: Optional[int], atime: bool = False) -> str:
    if t in EXPLICIT:
        return f"={t}"
    if atime:  # reads may or may not reach the backing file (page cache): not compared
        return "*"
    if before is None:
        return "new"
    return "same" if t == before else "changed"


def classify(now: dict, before: dict) -> dict:
    out = {}
    for path, (static, times) in now.items():
        prev = before.get(path, (None, (None, None, None)))[1]
        out[path] = static + (time_class(times[0], prev[0], atime=True),
                              "mtime " + time_class(times[1], prev[1]),
                              "ctime " + time_class(times[2], prev[2]))
    return out


def diff(want: dict, got: dict) -> list[str]:
    out = []
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            out.append(f"{k or '.'}: plain {want.get(k, 'absent')} / mount {got.get(k, 'absent')}")
    return out


# --- users acting on a tree ---------------------------------------------------------------------

class Actor:
    """tests/multiuser_ops.py as one user, rooted at one tree, until closed."""

    def __init__(self, user: str, root: str):
        uid, gid, groups = USERS[user]
        cmd = [PY, str(HELPER), root]
        if uid:
            cmd = [SETPRIV, f"--reuid={uid}", f"--regid={gid}"] + (
                [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]) \
                + cmd
        self.user, self.root = user, root
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd="/",
                                     env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
        self.buf = b""

    def call(self, op: dict, timeout: float = 15.0) -> dict:
        self.proc.stdin.write((json.dumps(op) + "\n").encode())
        self.proc.stdin.flush()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"user {self.user}: no answer to {op} in {timeout} s "
                                   f"on {self.root}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"user {self.user}'s helper exited: "
                                   f"{self.proc.stderr.read().decode(errors='replace')}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


@dataclass
class World:
    base: str
    src: str
    twin: str
    mnt: str
    mount: Mount
    actors: dict = field(default_factory=dict)  # (user, side) -> Actor
    n: int = 0

    def actor(self, user: str, side: str) -> Actor:
        key = (user, side)
        if key not in self.actors:
            self.actors[key] = Actor(user, self.mnt if side == "mount" else self.twin)
        return self.actors[key]

    def new_case(self) -> str:
        """A fresh subtree on both sides (fresh names: nothing the mount has cached)."""
        self.n += 1
        name = f"k{self.n}"
        build_tree(os.path.join(self.src, name))
        build_tree(os.path.join(self.twin, name))
        return name


@pytest.fixture(scope="module", params=["passthrough", "no-passthrough"])
def world(request):
    """One mount for the module, per I/O mode: with FUSE passthrough (the kernel does reads
    and writes on the backing file) and without (the daemon does them)."""
    base = tempfile.mkdtemp(prefix="fpol-multiuser-", dir="/tmp")
    os.chmod(base, 0o755)  # other users reach the mount and the twin through it
    src, twin, mnt = (os.path.join(base, x) for x in ("src", "twin", "mnt"))
    for d in (src, twin, mnt):
        os.mkdir(d)
        os.chmod(d, 0o755)
    policy = Path(base) / "allow.fpol"
    policy.write_text("policy allowall\ndefault allow\n")
    m = Mount(policy, Path(src), Path(mnt), Path(base) / "audit.log",
              passthrough=request.param == "passthrough")
    w = World(base, src, twin, mnt, m)
    try:
        m.start()
        yield w
    finally:
        for a in w.actors.values():
            a.close()
        rc = m.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert rc == 0, f"daemon exited {rc}: {m.stderr()}"


# --- running a sequence -------------------------------------------------------------------------

@dataclass
class Step:
    user: str
    op: dict
    want: Optional[str] = None  # the result POSIX gives (checked on the plain directory)

    def show(self) -> str:
        args = ", ".join(f"{k}={oct(v) if k in ('mode', 'umask') and isinstance(v, int) else v!r}"
                         for k, v in self.op.items() if k != "op")
        return f"{self.user}: {self.op['op']}({args})"


def S(user: str, op: str, path: Optional[str] = None, want: Optional[str] = "ok", **kw) -> Step:
    d = {"op": op}
    if path is not None:
        d["path"] = path
    d.setdefault("umask", 0o022)
    d.update(kw)
    return Step(user, d, want)


def _wait_tick(since: int) -> None:
    """Until the coarse clock (what inode times are taken from) passes `since`, so that a
    time an op sets differs from every time already in the tree."""
    while time.clock_gettime_ns(COARSE) <= since:
        time.sleep(0.001)


def prefixed(op: dict, case: str) -> dict:
    op = dict(op)
    for k in ("path", "to"):
        if k in op:
            op[k] = f"{case}/{op[k]}" if op[k] else case
    return op


@dataclass
class Outcome:
    problems: list  # one line per divergence (or wrong oracle)
    oracle: list  # steps where the plain directory did not give `want` (the case is wrong)
    log: list  # every step: mount / plain


def run_case(w: World, steps: list[Step], stop_at_first: bool = False) -> Outcome:
    case = w.new_case()
    src, twin = os.path.join(w.src, case), os.path.join(w.twin, case)
    out = Outcome([], [], [])
    before_m, before_t = snapshot(src), snapshot(twin)
    state_diverged = False
    for i, s in enumerate(steps):
        _wait_tick(time.clock_gettime_ns(COARSE))
        op = prefixed(s.op, case)
        got = w.actor(s.user, "mount").call(op)
        want = w.actor(s.user, "twin").call(op)
        now_m, now_t = snapshot(src), snapshot(twin)
        where = f"step {i + 1} {s.show()}"
        line = f"{where}: plain {fmt(want)} / mount {fmt(got)}"
        out.log.append(line)
        if s.want is not None and want["rc"] != (0 if s.want == "ok" else s.want):
            out.oracle.append(f"{where}: the plain directory gives {fmt(want)}, the case says "
                              f"{s.want}")
        if got != want:
            out.problems.append(line)
        if not state_diverged:
            d = diff(classify(now_t, before_t), classify(now_m, before_m))
            if d:
                state_diverged = True  # later steps start from different trees: reported once
                out.problems.append(f"{where}: the backing tree differs from the plain "
                                    f"directory:\n      " + "\n      ".join(d))
        if stop_at_first and out.problems:
            break
        before_m, before_t = now_m, now_t
    # What the mount shows must be what is on the backing tree.
    if not out.problems:
        shown = {}
        for rel in snapshot(src):
            try:
                shown[rel] = lstat_view(os.lstat(os.path.join(w.mnt, case, rel)))
            except OSError as e:
                shown[rel] = errno.errorcode.get(e.errno, e.errno)
        real = {rel: v[0][:5] for rel, v in snapshot(src).items()}
        d = diff(real, shown)
        if d:
            out.problems.append("lstat through the mount differs from the backing tree "
                                "(plain = backing):\n      " + "\n      ".join(d))
    return out


def fmt(r: dict) -> str:
    if r["rc"]:
        return r["rc"]
    v = r.get("value")
    return "ok" if v is None else f"ok {v}"


def check(w: World, steps: list[Step]) -> None:
    out = run_case(w, steps)
    assert not out.oracle, "the case is wrong about POSIX:\n  " + "\n  ".join(out.oracle)
    assert not out.problems, "mount differs from the plain directory:\n  " + \
        "\n  ".join(out.problems) + "\nall steps:\n  " + "\n  ".join(out.log)


# --- hand-written cases, one behaviour each -----------------------------------------------------

def _sysctl(name: str) -> int:
    try:
        with open(f"/proc/sys/fs/{name}") as f:
            return int(f.read())
    except OSError:
        return 0


# What POSIX plus this machine's link protections give (the mount and the plain directory
# share them; the cases only state the result in advance).
HARDLINK_OTHERS = "EPERM" if _sysctl("protected_hardlinks") else "ok"
FOLLOW_OTHERS_IN_STICKY = "EACCES" if _sysctl("protected_symlinks") else "ok"

NOW, OMIT = "now", "omit"
CASES = {
    "create-owner-and-mode": [
        S("a", "create", "plain/n", mode=0o640, flags=["O_WRONLY"]),
        S("b", "create", "plain/m", mode=0o666, flags=["O_RDWR"], umask=0o002),
        S("c", "mkdir", "plain/d", mode=0o751),
        S("c", "mkfifo", "plain/fifo", mode=0o620),
        S("b", "symlink", "plain/l", target="a-file"),
        S("a", "lstat", "plain/l"),
        S("root", "create", "plain/r", mode=0o600, flags=["O_WRONLY"]),
        S("a", "stat", "plain/n"),
        S("b", "open", "plain/n", flags=["O_RDONLY"], want="EACCES"),  # 0640, b not in a's group
        S("c", "create", "plain/d/x", mode=0o644, flags=["O_WRONLY"]),
    ],
    "umask": [
        S("a", "create", "plain/u077", mode=0o666, flags=["O_WRONLY"], umask=0o077),
        S("a", "create", "plain/u000", mode=0o666, flags=["O_WRONLY"], umask=0o000),
        S("a", "mkdir", "plain/d027", mode=0o777, umask=0o027),
        S("a", "mkfifo", "plain/f007", mode=0o666, umask=0o007),
        S("b", "create", "plain/u000x", mode=0o4777, flags=["O_WRONLY"], umask=0o000),
        S("b", "mkdir", "plain/d000", mode=0o1777, umask=0o000),
    ],
    "owner-of-created-can-manage-it": [  # the 160 failures: owner gets EPERM today
        S("a", "create", "plain/mine", mode=0o644, flags=["O_WRONLY"]),
        S("a", "chmod", "plain/mine", mode=0o600),
        S("a", "chown", "plain/mine", uid=-1, gid=G),
        S("a", "truncate", "plain/mine", size=5),
        S("a", "utime", "plain/mine", times=[T1, T2]),
        S("a", "link", "plain/mine", to="plain/mine2"),
        S("a", "mkdir", "plain/mydir", mode=0o700),
        S("a", "create", "plain/mydir/f", mode=0o600, flags=["O_WRONLY"]),
        S("a", "chmod", "plain/mydir", mode=0o755),
        S("a", "rename", "plain/mine2", to="plain/mydir/moved"),
        S("b", "unlink", "plain/mydir/moved", want="EACCES"),
        S("a", "unlink", "plain/mydir/moved"),
    ],
    "setgid-dir-inheritance": [
        S("a", "create", "shared/n", mode=0o644, flags=["O_WRONLY"]),
        S("a", "mkdir", "shared/d", mode=0o755),            # inherits gid and S_ISGID
        S("a", "create", "shared/d/n", mode=0o644, flags=["O_WRONLY"]),
        S("a", "mkfifo", "shared/fifo", mode=0o644),
        S("a", "symlink", "shared/l", target="n"),
        S("c", "create", "open-sgid/c", mode=0o2755, flags=["O_WRONLY"]),  # c not in G: S_ISGID dropped
        S("c", "mkdir", "open-sgid/cd", mode=0o755),
        S("a", "create", "open-sgid/a", mode=0o2755, flags=["O_WRONLY"]),  # a in G: kept
        S("a", "rename", "pub/a-file", to="shared/moved"),  # a rename keeps the old group
        S("c", "create", "shared/no", mode=0o644, flags=["O_WRONLY"], want="EACCES"),
    ],
    "sticky-unlink-rename": [
        S("b", "unlink", "pub/a-file", want="EPERM"),
        S("b", "rename", "pub/a-file", to="pub/stolen", want="EPERM"),
        S("b", "rename", "pub/b-file", to="pub/a-file", want="EPERM"),  # replacing a's
        S("b", "rename", "pub/a-open", to="plain/x", want="EPERM"),
        S("b", "rmdir", "pub/a-dir", want="EPERM"),
        S("c", "unlink", "pub/root-file", want="EPERM"),
        S("a", "rename", "pub/a-file", to="pub/a-renamed"),
        S("a", "unlink", "pub/a-renamed"),
        S("root", "unlink", "pub/b-file"),
        S("b", "create", "pub/b2", mode=0o666, flags=["O_WRONLY"]),
        S("a", "unlink", "pub/b2", want="EPERM"),
        S("a", "rename", "pub/a-open", to="pub/b2", want="EPERM"),
        S("b", "unlink", "pub/b2"),
    ],
    "sticky-setgid-dir": [
        S("a", "unlink", "sticky-shared/b-file", want="EPERM"),
        S("b", "rename", "sticky-shared/a-file", to="sticky-shared/x", want="EPERM"),
        S("a", "create", "sticky-shared/n", mode=0o664, flags=["O_WRONLY"], umask=0o002),
        S("b", "unlink", "sticky-shared/n", want="EPERM"),
        S("b", "write", "sticky-shared/n", data="by b"),  # group-writable: writing is allowed
        S("a", "rename", "sticky-shared/n", to="sticky-shared/m"),
        S("c", "unlink", "sticky-shared/m", want="EACCES"),
        S("root", "rename", "sticky-shared/m", to="sticky-shared/root-moved"),
    ],
    "chmod": [
        S("a", "chmod", "pub/a-file", mode=0o600),
        S("b", "chmod", "pub/a-file", mode=0o666, want="EPERM"),
        S("b", "chmod", "pub/a-open", mode=0o777, want="EPERM"),  # writable is not enough
        S("a", "chmod", "shared/c-file", mode=0o666, want="EPERM"),
        S("c", "chmod", "shared/c-file", mode=0o2755),  # c not in G: S_ISGID silently dropped
        S("c", "stat", "shared/c-file"),
        S("b", "chmod", "shared/b-file", mode=0o2775),  # b in G: kept
        S("a", "chmod", "home-a", mode=0o1777),
        S("root", "chmod", "home-a/secret", mode=0o4600),
        S("a", "chmod", "pub/a-link", mode=0o640),  # follows the symlink to a-file
    ],
    "chown-chgrp": [
        S("a", "chown", "pub/a-file", uid=B, gid=-1, want="EPERM"),
        S("a", "chown", "pub/a-file", uid=-1, gid=G),      # a member of G
        S("a", "chown", "pub/a-file", uid=-1, gid=B, want="EPERM"),  # not a member
        S("a", "chown", "pub/a-file", uid=A, gid=A),       # no change of owner: allowed
        S("b", "chown", "pub/a-file", uid=-1, gid=G, want="EPERM"),
        S("c", "chown", "shared/c-file", uid=-1, gid=G),   # same group, not a member: allowed
        S("c", "chown", "shared/c-file", uid=-1, gid=C),
        S("root", "chown", "pub/b-file", uid=C, gid=C),
        S("c", "chown", "pub/b-file", uid=-1, gid=C),
        S("a", "chown", "pub/a-link", uid=-1, gid=G, follow=False),  # lchown of a's symlink
        S("b", "chown", "pub/a-link", uid=-1, gid=G, follow=False, want="EPERM"),
    ],
    "setid-cleared-on-chown": [
        S("a", "chown", "home-a/suid", uid=-1, gid=A),       # S_ISUID and S_ISGID cleared
        S("a", "stat", "home-a/suid"),
        S("a", "chown", "home-a/sgid-nox", uid=-1, gid=A),   # no group exec: S_ISGID kept
        S("a", "stat", "home-a/sgid-nox"),
        S("root", "chown", "home-a/open-suid", uid=B, gid=-1),  # root too (Linux >= 2.2.13)
        S("root", "stat", "home-a/open-suid"),
    ],
    "chown-without-change": [  # chown(-1, -1): no id changes, yet ctime and set-id bits do
        S("c", "chown", "pub/root-file", uid=-1, gid=-1),       # anyone: ctime only
        S("a", "chown", "home-a/suid", uid=-1, gid=-1),         # the owner: set-id cleared
        S("a", "chown", "home-a/sgid-nox", uid=-1, gid=-1),     # no group exec: S_ISGID kept
        S("b", "chown", "home-a/open-suid", uid=-1, gid=-1, want="EPERM"),  # clearing is a chmod
        S("root", "chown", "home-a/open-suid", uid=-1, gid=-1),
        S("a", "chown", "home-a", uid=-1, gid=-1),              # a directory keeps its bits
    ],
    "setid-cleared-on-write": [
        S("b", "write", "home-a/open-suid", data="x"),       # not the owner: both bits cleared
        S("b", "stat", "home-a/open-suid"),
        S("a", "write", "home-a/sgid-nox", data="y", append=True),  # no group exec: kept
        S("a", "stat", "home-a/sgid-nox"),
        S("a", "chmod", "home-a/suid", mode=0o6775),
        S("a", "write", "home-a/suid", data="z"),            # the owner: cleared too
        S("a", "stat", "home-a/suid"),
    ],
    "setid-set-through-the-mount-then-written": [  # the bits were not there at lookup
        S("a", "stat", "pub/a-open"),
        S("a", "chmod", "pub/a-open", mode=0o6777),
        S("b", "write", "pub/a-open", data="x"),
        S("a", "chmod", "pub/a-file", mode=0o4755),
        S("a", "write", "pub/a-file", data="y", append=True),
        S("a", "create", "plain/new", mode=0o6777, flags=["O_WRONLY"], umask=0o000),
        S("a", "write", "plain/new", data="z"),
        S("b", "chmod", "shared/b-file", mode=0o2775),
        S("a", "open", "shared/b-file", flags=["O_RDWR"], data="w"),
    ],
    "setid-cleared-on-truncate": [
        S("b", "truncate", "home-a/open-suid", size=2),
        S("b", "stat", "home-a/open-suid"),
        S("a", "chmod", "home-a/suid", mode=0o6777),
        S("b", "ftruncate", "home-a/suid", size=0),
        S("b", "stat", "home-a/suid"),
        S("b", "create", "home-a/suid", mode=0o644, flags=["O_WRONLY", "O_TRUNC"]),
    ],
    "setid-kept-for-root": [
        S("root", "write", "home-a/open-suid", data="r"),    # CAP_FSETID: kept
        S("root", "stat", "home-a/open-suid"),
        S("root", "truncate", "home-a/suid", size=1),
        S("root", "stat", "home-a/suid"),
    ],
    "truncate": [
        S("a", "truncate", "pub/a-file", size=2),
        S("b", "truncate", "pub/a-file", size=0, want="EACCES"),
        S("b", "truncate", "pub/a-open", size=100),        # writable by others
        S("b", "ftruncate", "pub/a-open", size=1),
        S("a", "truncate", "home-a/ro", size=0, want="EACCES"),  # the owner, mode 0444
        S("b", "truncate", "home-b", size=0, want="EISDIR"),
        S("c", "create", "pub/a-file", flags=["O_WRONLY", "O_TRUNC"], want="EACCES"),
        S("c", "create", "pub/a-open", flags=["O_WRONLY", "O_TRUNC"]),
    ],
    "utimes": [
        S("a", "utime", "pub/a-file", times=[T1, T2]),       # owner: explicit
        S("a", "utime", "pub/a-file", times=None),           # owner: now
        S("b", "utime", "pub/a-file", times=None, want="EACCES"),  # no write permission
        S("b", "utime", "pub/a-file", times=[T1, T2], want="EPERM"),
        S("b", "utime", "pub/a-open", times=None),           # write permission: now is allowed
        S("b", "utime", "pub/a-open", times=[NOW, NOW]),
        S("b", "utime", "pub/a-open", times=[T1, T1], want="EPERM"),  # but not explicit
        S("b", "utime", "pub/a-open", times=[NOW, T2], want="EPERM"),
        S("b", "utime", "pub/a-open", times=[OMIT, NOW], want="EPERM"),
        S("a", "utime", "pub/a-open", times=[OMIT, T2]),     # only mtime
        S("a", "utime", "pub/a-open", times=[T1, OMIT]),     # only atime
        S("a", "utime", "pub/a-open", times=[OMIT, OMIT]),
        S("a", "utime", "home-a/ro", times=[T2, T1]),        # owner of a read-only file
        S("a", "utime", "home-a/ro", times=None),
        S("a", "utime", "home-a", times=[T1, T2]),
        S("c", "utime", "shared/b-file", times=None, want="EACCES"),
        S("a", "utime", "shared/b-file", times=None),        # group write
        S("a", "utime", "pub/a-link", times=[T1, T1], follow=False),  # the link itself
        S("b", "utime", "pub/a-link", times=None, follow=False),  # a symlink is 0777
        S("b", "utime", "pub/a-link", times=[T2, T2], follow=False, want="EPERM"),
    ],
    "opens-by-access-mode": [
        S("b", "open", "pub/a-file", flags=["O_RDONLY"], read=True),
        S("b", "open", "pub/a-file", flags=["O_WRONLY"], want="EACCES"),
        S("b", "open", "pub/a-file", flags=["O_RDWR"], want="EACCES"),
        S("b", "open", "pub/a-file", flags=["O_RDONLY", "O_APPEND"]),  # O_APPEND alone: read
        S("b", "open", "home-a/secret", flags=["O_RDONLY"], want="EACCES"),
        S("b", "read", "plain/root-secret", want="EACCES"),
        S("a", "open", "home-a/secret", flags=["O_RDWR"], read=True),
        S("a", "open", "home-a/ro", flags=["O_WRONLY"], want="EACCES"),
        S("b", "open", "shared/b-file", flags=["O_RDWR"], data="B"),
        S("a", "open", "shared/b-file", flags=["O_WRONLY", "O_APPEND"], data="A"),  # group
        S("c", "open", "shared/b-file", flags=["O_WRONLY"], want="EACCES"),
        S("b", "listdir", "home-a"),
        S("b", "listdir", "home-a/xonly", want="EACCES"),   # 0711: search, no read
        S("b", "read", "home-a/xonly/f"),
        S("b", "stat", "home-a/sub/f", want="EACCES"),      # 0700
        S("a", "listdir", "home-b", want="EACCES"),
        S("c", "open", "home-b/f", flags=["O_RDONLY"], want="EACCES"),
        S("a", "access", "pub/a-open", mode=os.W_OK | os.R_OK),
        S("b", "access", "pub/a-file", mode=os.W_OK),           # False, not an error
        S("b", "access", "home-a/secret", mode=os.R_OK),
        S("c", "access", "root-only/f", mode=os.F_OK),          # cannot search root-only
        S("a", "access", "home-a/suid", mode=os.X_OK),
        S("c", "access", "shared/b-file", mode=os.W_OK),
        S("b", "create", "pub/a-file", mode=0o600, flags=["O_WRONLY", "O_EXCL"], want="EEXIST"),
        S("b", "open", "home-a", flags=["O_RDONLY", "O_DIRECTORY"]),
        S("b", "open", "home-a/sub", flags=["O_RDONLY", "O_DIRECTORY"], want="EACCES"),
    ],
    "o-noatime": [
        S("a", "open", "pub/a-file", flags=["O_RDONLY", "O_NOATIME"], read=True),
        S("b", "open", "pub/a-file", flags=["O_RDONLY", "O_NOATIME"], want="EPERM"),
        S("b", "open", "pub/a-open", flags=["O_RDWR", "O_NOATIME"], want="EPERM"),
        S("root", "open", "pub/a-file", flags=["O_RDONLY", "O_NOATIME"]),
        S("b", "open", "pub/b-file", flags=["O_WRONLY", "O_NOATIME"], data="n"),
    ],
    "write-into-others-dirs": [
        S("b", "create", "home-a/n", mode=0o644, flags=["O_WRONLY"], want="EACCES"),
        S("b", "mkdir", "home-a/d", want="EACCES"),
        S("b", "mkfifo", "home-a/p", want="EACCES"),
        S("b", "symlink", "home-a/l", target="secret", want="EACCES"),
        S("b", "unlink", "home-a/ro", want="EACCES"),
        S("b", "rename", "home-a/ro", to="pub/ro", want="EACCES"),
        S("c", "create", "root-only/n", mode=0o644, flags=["O_WRONLY"], want="EACCES"),
        S("c", "rename", "pub/b-file", to="home-b/x", want="EACCES"),
        S("a", "create", "pub/a-dir/n", mode=0o644, flags=["O_WRONLY"]),
        S("b", "create", "pub/a-dir/m", mode=0o644, flags=["O_WRONLY"]),  # a-dir is 0777
        S("b", "unlink", "pub/a-dir/n"),                                   # not sticky
        S("a", "mkdir", "pub/a-dir/sub", mode=0o755),
        S("b", "rename", "pub/a-dir/m", to="pub/a-dir/sub/m", want="EACCES"),
        S("b", "rename", "pub/a-dir/sub", to="pub/a-dir/sub2"),  # same parent: allowed
        S("b", "rename", "pub/a-dir/sub2", to="plain/sub2", want="EACCES"),  # `..` needs write
    ],
    "hard-links": [
        S("b", "link", "home-a/secret", to="pub/stolen", want=HARDLINK_OTHERS),
        S("b", "link", "pub/a-file", to="pub/a-file-b", want=HARDLINK_OTHERS),
        S("b", "link", "pub/a-open", to="pub/a-open-b"),   # readable and writable: allowed
        S("b", "unlink", "pub/a-open-b", want="EPERM"),  # sticky: the link is a's file
        S("a", "unlink", "pub/a-open-b"),
        S("a", "link", "pub/a-file", to="pub/a-file-2"),
        S("a", "link", "pub/a-file", to="home-b/x", want="EACCES"),
        S("root", "link", "home-a/secret", to="root-only/s"),
        S("b", "link", "pub/b-file", to="home-a/x", want="EACCES"),
    ],
    "symlinks": [
        S("b", "symlink", "pub/to-secret", target="../home-a/secret"),
        S("b", "read", "pub/to-secret", want="EACCES"),
        S("a", "read", "pub/to-secret", want=FOLLOW_OTHERS_IN_STICKY),  # b's link, sticky pub
        S("b", "readlink", "pub/to-secret"),
        S("b", "symlink", "pub/to-root", target="../root-only/f"),
        S("a", "read", "pub/to-root", want="EACCES"),
        S("root", "read", "pub/to-root"),
        S("b", "unlink", "pub/a-link", want="EPERM"),
        S("b", "create", "pub/a-link", mode=0o644, flags=["O_WRONLY"], want="EACCES"),
        S("a", "open", "pub/a-link", flags=["O_WRONLY", "O_APPEND"], data="via link"),
    ],
    "rename-directories": [
        S("a", "mkdir", "plain/da", mode=0o755),
        S("a", "create", "plain/da/f", mode=0o644, flags=["O_WRONLY"]),
        S("b", "rename", "plain/da", to="plain/db"),       # plain is 0777, not sticky
        S("b", "rename", "plain/db", to="pub/da", want="EACCES"),  # `..` of a's dir
        S("a", "rename", "plain/db", to="pub/da"),
        S("b", "rmdir", "pub/da", want="EPERM"),
        S("a", "unlink", "pub/da/f"),
        S("a", "rmdir", "pub/da"),
    ],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(world, name):
    check(world, CASES[name])


# --- generated sequences ------------------------------------------------------------------------

DIRS = [p for p, kind, *_ in TREE if kind == "dir"] + [""]
PATHS = [p for p, *_ in TREE] + [f"{d}/{n}".lstrip("/") for d in DIRS for n in ("n1", "n2", "d1")] \
    + [f"{d}/d1/n1".lstrip("/") for d in ("plain", "pub", "shared", "open-sgid")]
FLAGS = [["O_RDONLY"], ["O_WRONLY"], ["O_RDWR"], ["O_RDONLY", "O_NOATIME"],
         ["O_WRONLY", "O_TRUNC"], ["O_RDWR", "O_APPEND"], ["O_RDONLY", "O_DIRECTORY"],
         ["O_WRONLY", "O_NOATIME"], ["O_RDONLY", "O_TRUNC"]]
FILE_MODES = [0o644, 0o600, 0o666, 0o755, 0o2755, 0o4755, 0o6777, 0o2644, 0o1644, 0o000]
DIR_MODES = [0o755, 0o777, 0o700, 0o2775, 0o1777, 0o3777, 0o711]
UMASKS = [0o022, 0o077, 0o002, 0o000, 0o027]
IDS = [-1, A, B, C, G, 0]


def generate(seed: int, n: int) -> list[Step]:
    rng = random.Random(seed)
    users = ["a", "b", "c", "a", "b", "c", "root"]
    steps = []
    existing = [p for p, *_ in TREE]
    made: list[str] = []  # names the sequence tried to make: likely there later

    def pick(new: bool) -> str:
        r = rng.random()
        if new and r < 0.6 or not made and r < 0.2:
            return rng.choice(PATHS)
        if made and r < 0.55:
            return rng.choice(made)
        return rng.choice(existing)

    for _ in range(n):
        u = rng.choice(users)
        kw = {"umask": rng.choice(UMASKS)}
        op = rng.choices(
            ["create", "mkdir", "mkfifo", "chmod", "chown", "truncate", "ftruncate", "utime",
             "rename", "unlink", "rmdir", "link", "symlink", "open", "write", "read", "stat",
             "readlink", "listdir", "access"],
            weights=[8, 4, 2, 6, 6, 3, 2, 6, 6, 4, 2, 4, 3, 8, 5, 3, 2, 1, 2, 2])[0]
        p = pick(new=op in ("create", "mkdir", "mkfifo", "symlink"))
        if op in ("create", "mkdir", "mkfifo", "symlink"):
            made.append(p)
        if op == "create":
            kw.update(mode=rng.choice(FILE_MODES),
                      flags=rng.choice([["O_WRONLY"], ["O_RDWR"], ["O_WRONLY", "O_EXCL"],
                                        ["O_WRONLY", "O_TRUNC"], ["O_RDONLY"]]))
        elif op in ("mkdir",):
            kw.update(mode=rng.choice(DIR_MODES))
        elif op == "mkfifo":
            kw.update(mode=rng.choice([0o644, 0o666, 0o2644]))
        elif op == "chmod":
            kw.update(mode=rng.choice(FILE_MODES + DIR_MODES))
        elif op == "chown":
            kw.update(uid=rng.choice(IDS), gid=rng.choice(IDS), follow=rng.random() < 0.8)
        elif op in ("truncate", "ftruncate"):
            kw.update(size=rng.choice([0, 3, 100]))
        elif op == "utime":
            kw.update(times=rng.choice([None, [T1, T2], [NOW, NOW], [NOW, OMIT], [OMIT, T2],
                                        [T2, NOW], [OMIT, OMIT]]),
                      follow=rng.random() < 0.9)
        elif op in ("rename", "link"):
            kw.update(to=pick(new=True))
            made.append(kw["to"])
        elif op == "symlink":
            kw.update(target=rng.choice(["n1", "../pub/a-file", "../home-a/secret", "d1",
                                         "../root-only/f"]))
        elif op == "open":
            kw.update(flags=rng.choice(FLAGS), read=rng.random() < 0.5)
        elif op == "write":
            kw.update(data=rng.choice(["x", "hello"]), append=rng.random() < 0.5)
        elif op == "access":
            kw.update(mode=rng.choice([os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.W_OK]))
        steps.append(S(u, op, p, want=None, **kw))
    return steps


SEEDS = list(range(1, 11)) + [random.randrange(1 << 30) for _ in range(
    int(os.environ.get("FPOL_MULTIUSER_SEEDS", "0")))]


@pytest.mark.parametrize("seed", SEEDS)
def test_generated(world, seed):
    steps = generate(seed, 50)
    out = run_case(world, steps, stop_at_first=True)
    # a sequence that never succeeds or never fails would test little
    rcs = [line.split(": plain ")[1].split(" /")[0] for line in out.log]
    assert out.problems or ("ok" in " ".join(rcs) and any(not r.startswith("ok") for r in rcs)), \
        f"seed {seed}: a degenerate sequence: {rcs}"
    assert not out.problems, f"seed {seed}: the first divergence:\n  " + \
        "\n  ".join(out.problems) + "\nsteps up to it:\n  " + "\n  ".join(out.log)


# --- several users at the same moment -----------------------------------------------------------

def test_users_at_once(world):
    """a, b and c create files, directories and links in the same directories at the same
    time: every object belongs to the user whose request made it, with that user's umask."""
    case = world.new_case()
    plans = {
        u: [prefixed(op, case) for i in range(15) for op in (
            {"op": "create", "path": f"open-sgid/{u}{i}", "mode": 0o666, "flags": ["O_WRONLY"],
             "umask": um, "data": u * i},
            {"op": "mkdir", "path": f"plain/{u}d{i}", "mode": 0o777, "umask": um},
            {"op": "symlink", "path": f"pub/{u}l{i}", "target": f"{u}{i}", "umask": um},
            {"op": "chmod", "path": f"open-sgid/{u}{i}", "mode": 0o640 + i % 2, "umask": um},
        )]
        for u, um in (("a", 0o002), ("b", 0o027), ("c", 0o077))
    }
    results: dict = {}

    def drive(u: str, side: str) -> None:
        actor = world.actor(u, side)
        results[u, side] = [actor.call(op)["rc"] for op in plans[u]]

    for side in ("mount", "twin"):
        threads = [threading.Thread(target=drive, args=(u, side)) for u in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), f"users still busy on the {side} after 60 s"
    for u in plans:
        assert results[u, "twin"] == [0] * len(plans[u]), f"{u} on the plain directory"
        assert results[u, "mount"] == results[u, "twin"], f"user {u}: results differ"
    want = {k: v[0] for k, v in snapshot(os.path.join(world.twin, case)).items()}
    got = {k: v[0] for k, v in snapshot(os.path.join(world.src, case)).items()}
    assert want == got, "backing tree differs:\n  " + "\n  ".join(diff(want, got))


# --- --owner-only: the root-only mount of before -----------------------------------------------

class OwnerOnlyMount(Mount):
    def args(self, foreground: bool = True) -> list[str]:
        return super().args(foreground) + ["--owner-only"]


def test_owner_only_serves_root_alone():
    """`fpol mount --owner-only`: no allow_other, so the kernel refuses every other user
    before the daemon is asked; root is served as before."""
    from fpol.runtime.mount import mount_entry

    base = tempfile.mkdtemp(prefix="fpol-owneronly-", dir="/tmp")
    os.chmod(base, 0o755)
    src, mnt = os.path.join(base, "src"), os.path.join(base, "mnt")
    build_tree(src)
    os.mkdir(mnt)
    policy = Path(base) / "allow.fpol"
    policy.write_text("policy allowall\ndefault allow\n")
    m = OwnerOnlyMount(policy, Path(src), Path(mnt), Path(base) / "audit.log")
    actors = []
    try:
        m.start()
        assert "allow_other" not in mount_entry(mnt).options.split(",")
        root, a = Actor("root", mnt), Actor("a", mnt)
        actors += [root, a]
        assert root.call({"op": "stat", "path": "home-a/secret"})["rc"] == 0
        assert root.call({"op": "read", "path": "home-a/secret"})["value"] == "secret-a"
        for op in ({"op": "stat", "path": ""}, {"op": "listdir", "path": "pub"},
                   {"op": "read", "path": "pub/a-file"},
                   {"op": "create", "path": "pub/x", "flags": ["O_WRONLY"]}):
            assert a.call(op)["rc"] == "EACCES", op
    finally:
        for x in actors:
            x.close()
        rc = m.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert rc == 0, f"daemon exited {rc}: {m.stderr()}"
