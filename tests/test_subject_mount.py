"""Who is asking (issue 16) on a real `fpol mount`: a differential test, several users.

A policy with subject conditions (`by uid`, `by uid N-M`, `by gid`, `by user`, `by group`,
`except by ...`) is mounted over a backing tree. The same syscalls run as several
unprivileged users (each a child process under `setpriv --reuid/--regid`,
tests/multiuser_ops.py) on the mount and on a plain twin directory. Every result on the
mount must equal the oracle: the twin's result (the Unix permissions of the backing tree,
as that user) first; where they allow, the reference evaluator's decision for the requests
the syscall makes (a lookup of every component, a readlink of every symlink followed, then
the op's own), asked with that user's uid and gid: its first deny gives the errno, and
without a deny the twin's result (return value and what the op observed) is the answer.
(A lookup or readlink the policy refuses comes before the Unix checks further along the
path, as in the kernel's walk: see `oracle`.) A step the oracle refuses runs on a
throw-away copy of the twin, so the twin only ever holds what the allowed steps did.

After every step the backing tree must equal the twin (names, types, modes, owners, sizes,
link counts, contents, symlink targets); after every refused step it must be exactly as
it was before it (mtimes and xattrs too). Each step also states the result it expects, so
a case cannot pass vacuously, and for a refusal whether it is the policy's (the default)
or the Unix permissions' (`by="unix"`): the test checks that the oracle agrees.

The kernel's entry and attribute caches are shared by every user of the mount, so the
cases also check that a decision made for one user never answers another's request: user
a looks a path up, stats it, lists its directory (READDIRPLUS) or reads it, then user b
does the same at once, and the other way round; a directory is moved under a user's cwd
into a place hidden from them; users ask at the same time. Each case has a mount of its
own, with `--cache 30`; the cases about caches also with the default (`--cache auto`).
Passthrough is on (the default): a file one user may read and another may not is opened
by the daemon, one whose reads and writes are decided alike for everyone by the kernel.
The subject is the FUSE request's uid and gid, the caller's fsuid and fsgid: a root
process that sets only those is judged as them.

Supplementary groups are not part of the subject (FUSE sends only the fsuid and fsgid):
a `by gid 3000` rule matches a requester whose fsgid is 3000, not one whose supplementary
groups hold 3000 (LANGUAGE.md §6); the Unix permissions still honour those groups.

Needs root, /dev/fuse and setpriv; skips naming what is missing.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from fpol.compiler.driver import check as check_policy
from fpol.compiler.evaluate import Evaluator, Request

from fusemount import Mount, snapshot as full_snapshot
from test_multiuser import HELPER, PY, SETPRIV, Actor, _why_not

_MISSING = _why_not()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))


def _named_user() -> tuple[str, int, int]:
    """A user of this machine with a passwd entry (for `by user NAME`): (name, uid, gid)."""
    for p in sorted(pwd.getpwall(), key=lambda p: p.pw_uid):
        if 0 < p.pw_uid < 1000 and p.pw_name.isidentifier():
            return p.pw_name, p.pw_uid, p.pw_gid
    p = pwd.getpwnam("nobody")
    return p.pw_name, p.pw_uid, p.pw_gid


def _named_group() -> tuple[str, int]:
    """A group of this machine (for `by group NAME`), not one of the test's ids."""
    for g in sorted(grp.getgrall(), key=lambda g: g.gr_gid):
        if 0 < g.gr_gid < 1000 and g.gr_name.isidentifier() and g.gr_gid != _named_user()[2]:
            return g.gr_name, g.gr_gid
    raise RuntimeError("no group with a gid between 1 and 999 on this machine")


NUSER, NUID, NGID = _named_user()
NGROUP, GGID = _named_group()
G = 3000  # the team's group

# name -> (uid, gid, supplementary groups; None: keep root's)
USERS = {
    "root": (0, 0, None),
    "a": (2001, 2001, [G]),   # the backup user: reads /db; 3000 only as a supplementary group
    "b": (2002, 2002, [G]),   # the lowest uid of the hidden range; 3000 supplementary
    "c": (2003, G, []),       # 3000 as the primary group (fsgid): writes /team
    "d": (1500, 1500, []),    # below every range
    "e": (2011, 2011, []),    # just above the hidden range
    "f": (2010, 2010, []),    # the highest uid of the hidden range
    "n": (NUID, NUID, []),    # the named user (`by user NAME`)
    "g": (2004, GGID, []),    # the named group's gid as fsgid (`by group NAME`)
    "h": (2005, 2005, [GGID]),  # the named group as a supplementary group only
}

POLICY = f"""\
policy who
default allow
# only root, the backup user (uid 2001) and the named user read the database
deny read under /db except by uid 0, by uid 2001, by user {NUSER} with EPERM
# nobody but root and the named group (as fsgid) changes /etc
deny write under /etc except by uid 0, by group {NGROUP} with EROFS
# the team writes /team: its group must be the requester's fsgid
deny write under /team except by gid {G} with EPERM
# /private does not exist for uids 2002-2010
deny all under /private by uid 2002-2010 with ENOENT
# b may not see the attributes of what is in /meta (the directory itself is left alone)
deny stat matching "/meta/*" by uid 2002 with EACCES
# members of gid 3000 (fsgid) may not read /team/draft
deny read at /team/draft by gid {G} with EACCES
# keys in /mixed do not exist for uids 2002-2010; the directory and its other names are
# the same for everyone (the kernel may cache them)
deny all under /mixed named "*.key" by uid 2002-2010 with ENOENT
# b may not list /lists (but may look names up in it)
deny list under /lists by uid 2002
"""

# (path, kind, mode, uid, gid, content or symlink target)
TREE = [
    ("db", "dir", 0o755, 0, 0, None),
    ("db/data", "file", 0o644, 0, 0, "DB-DATA"),
    ("db/root-only", "file", 0o600, 0, 0, "ROOT-ONLY"),   # Unix refuses a and b first
    ("db/sub", "dir", 0o755, 0, 0, None),
    ("db/sub/deep", "file", 0o644, 0, 0, "DEEP"),
    ("etc", "dir", 0o777, 0, 0, None),                     # Unix lets everyone write here
    ("etc/conf", "file", 0o666, 0, 0, "CONF"),
    ("etc/mine", "file", 0o644, 2003, G, "C-OWNS-IT"),
    ("team", "dir", 0o2775, 0, G, None),                   # group-writable, setgid
    ("team/doc", "file", 0o664, 0, G, "DOC"),
    ("team/draft", "file", 0o664, 0, G, "DRAFT"),
    ("private", "dir", 0o755, 0, 0, None),
    ("private/f", "file", 0o644, 0, 0, "PRIVATE"),
    ("private/sub", "dir", 0o755, 0, 0, None),
    ("private/sub/g", "file", 0o644, 0, 0, "PRIVATE-G"),
    ("meta", "dir", 0o755, 0, 0, None),
    ("meta/f", "file", 0o644, 0, 0, "META"),
    ("meta/l", "symlink", 0o777, 0, 0, "f"),
    ("meta/d", "dir", 0o755, 0, 0, None),
    ("mixed", "dir", 0o777, 0, 0, None),
    ("mixed/a.key", "file", 0o644, 0, 0, "A-KEY"),
    ("mixed/plain", "file", 0o644, 0, 0, "PLAIN"),
    ("mixed/dir", "dir", 0o777, 0, 0, None),
    ("mixed/dir/b.key", "file", 0o666, 0, 0, "B-KEY"),
    ("lists", "dir", 0o755, 0, 0, None),
    ("lists/x", "file", 0o644, 0, 0, "X"),
    ("pub", "dir", 0o1777, 0, 0, None),
    ("pub/note", "file", 0o644, 0, 0, "NOTE"),
    ("pub/dd", "dir", 0o777, 0, 0, None),
    ("pub/dd/f", "file", 0o644, 0, 0, "DD-F"),
    ("pub/to-db", "symlink", 0o777, 0, 0, "../db/data"),
    ("pub/to-private", "symlink", 0o777, 0, 0, "../private/f"),
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
        else:
            os.symlink(content, p)
        os.lchown(p, uid, gid)
        if kind != "symlink":
            os.chmod(p, mode)


def static_view(root: str) -> dict:
    """What must be equal between the backing tree and the twin (no times: the twin's
    steps run on copies)."""
    return {k: v[:5] + v[6:8] for k, v in full_snapshot(root).items()}


# --- the users ----------------------------------------------------------------------------

class Person(Actor):
    """tests/multiuser_ops.py as (uid, gid, groups), rooted at one tree, until closed."""

    def __init__(self, user: str, root: str, cwd: str = "/"):  # not Actor.__init__: own ids
        uid, gid, groups = USERS[user]
        cmd = [PY, str(HELPER), root]
        if uid or gid:
            cmd = [SETPRIV, f"--reuid={uid}", f"--regid={gid}"] + (
                [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]) \
                + cmd
        self.user, self.root, self.buf = user, root, b""
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=cwd,
                                     env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})


# --- the language requests a step makes ---------------------------------------------------

def _comps(path: str) -> list[bytes]:
    return [os.fsencode(c) for c in path.split("/")]


class Mapper:
    """The requests a step makes, read off the twin before the step (as
    tests/test_attacks.py does for its corpus)."""

    def __init__(self, root: str, uid: int, gid: int):
        self.root, self.uid, self.gid = os.fsencode(root), uid, gid

    def req(self, op: str, path: tuple, to: Optional[tuple] = None, flags: int = 0) -> Request:
        return Request(op, path, to, flags, 0, uid=self.uid, gid=self.gid)

    def lstat(self, comps: tuple) -> Optional[os.stat_result]:
        try:
            return os.lstat(self.root + b"".join(b"/" + c for c in comps))
        except OSError:
            return None

    def resolve(self, path: str, follow: bool):
        """-> (requests, final components, its lstat or None, whether the walk got there)"""
        reqs, todo, cur, st, hops = [], _comps(path), [], None, 0
        while todo:
            name = todo.pop(0)
            if name in (b"", b"."):
                continue
            if name == b"..":
                if cur:
                    cur.pop()
                continue
            nxt = tuple(cur) + (name,)
            reqs.append(self.req("lookup", nxt))
            st = self.lstat(nxt)
            last = not any(c not in (b"", b".") for c in todo)
            if st is None:
                return reqs, nxt, None, last
            if stat.S_ISLNK(st.st_mode) and (not last or follow):
                hops += 1
                assert hops < 40 and not os.readlink(
                    self.root + b"".join(b"/" + c for c in nxt)).startswith(b"/")
                reqs.append(self.req("readlink", nxt))
                todo = os.readlink(self.root + b"".join(b"/" + c for c in nxt)).split(b"/") + todo
                continue
            if not last and not stat.S_ISDIR(st.st_mode):
                return reqs, nxt, st, False
            cur = list(nxt)
        return reqs, tuple(cur), st if cur else os.lstat(self.root), True

    def open_reqs(self, comps, st, flags: int) -> list[Request]:
        if st is None:
            return [self.req("create", comps, flags=flags | os.O_CREAT)] \
                if flags & os.O_CREAT else []
        if flags & os.O_CREAT and flags & os.O_EXCL:
            return []
        if stat.S_ISDIR(st.st_mode):
            return [self.req("opendir", comps)]
        return [self.req("open", comps, flags=flags & ~os.O_CREAT)]

    def requests(self, op: dict) -> list[Request]:
        name, path = op["op"], op.get("path", "")
        if name in ("read", "write", "open", "create"):
            flags = {"read": os.O_RDONLY, "write": os.O_WRONLY}.get(name)
            if flags is None:
                flags = 0
                for f in op.get("flags", []):
                    flags |= getattr(os, f)
                if name == "create":
                    flags |= os.O_CREAT
            reqs, comps, st, done = self.resolve(path, follow=not flags & os.O_NOFOLLOW)
            if not done:
                return reqs
            opened = self.open_reqs(comps, st, flags)
            reqs += opened
            if opened and (name == "read" or op.get("read")):
                reqs.append(self.req("read", comps))
            if opened and (name == "write" or "data" in op):
                reqs.append(self.req("write", comps))
            return reqs
        if name in ("rename", "link"):
            ra, ca, sa, da = self.resolve(path, follow=False)
            rb, cb, _, db = self.resolve(op["to"], follow=False)
            return ra + rb + ([self.req(name, ca, cb)] if da and db and sa is not None else [])
        follow = name in ("stat", "chmod", "truncate", "listdir")
        reqs, comps, st, done = self.resolve(path, follow=follow)
        if not done or (st is None and name not in ("mkdir", "symlink", "mkfifo")):
            return reqs
        own = {"stat": ["getattr"], "lstat": ["getattr"], "chmod": ["setattr"],
               "truncate": ["setattr"], "listdir": ["opendir", "readdir"],
               "mkfifo": ["mknod"]}.get(name, [name])
        return reqs + [self.req(o, comps) for o in own]


# --- the world: the mount, its twin, the users on both -------------------------------------

@dataclass
class World:
    base: str
    cache: str
    policy: Path
    evaluator: Evaluator
    mount: Optional[Mount] = None
    actors: dict = field(default_factory=dict)  # (user, side) -> Person
    n: int = 0

    def dir(self, side: str) -> str:
        return os.path.join(self.base, {"mount": "mnt"}.get(side, side))

    def actor(self, user: str, side: str) -> Person:
        if (user, side) not in self.actors:
            self.actors[user, side] = Person(user, self.dir(side))
        return self.actors[user, side]

    def fresh(self) -> None:
        """A new case: the backing tree and the twin built anew, and a mount of its own (a
        tree rebuilt behind a caching mount would be seen late, as documented; stale
        entries are not what these cases are about)."""
        self.stop()
        self.n += 1
        for side in ("src", "twin"):
            shutil.rmtree(self.dir(side), ignore_errors=True)
            build_tree(self.dir(side))
        self.mount = Mount(self.policy, Path(self.dir("src")), Path(self.dir("mount")),
                           Path(self.base) / f"audit{self.n}.log",
                           extra_args=("--cache", self.cache)).start()

    def stop(self) -> None:
        if self.mount is not None:
            m, self.mount = self.mount, None
            rc = m.stop()
            assert rc == 0, f"daemon exited {rc}: {m.stderr()}"

    def close(self) -> None:
        for a in self.actors.values():
            a.close()
        self.stop()


def _make_world(cache: str) -> World:
    base = tempfile.mkdtemp(prefix="fpol-subjects-", dir="/tmp")
    os.chmod(base, 0o755)  # other users reach the mount, the twin and the trial through it
    os.mkdir(os.path.join(base, "mnt"))
    policy = Path(base) / "who.fpol"
    policy.write_text(POLICY)
    result = check_policy(POLICY, str(policy))
    errors = [f"{d.code} {d.message}" for d in result.diagnostics if d.is_error]
    assert not errors, errors
    return World(base, cache, policy, Evaluator(result.policy))


@pytest.fixture(scope="module")
def worlds():
    """One world per cache time, made on first use, passthrough on (the default); a
    mount per case."""
    made: dict = {}

    def get(cache: str) -> World:
        if cache not in made:
            made[cache] = _make_world(cache)
        return made[cache]

    try:
        yield get
    finally:
        for w in made.values():
            try:
                w.close()
            finally:
                shutil.rmtree(w.base, ignore_errors=True)


# --- steps and the oracle ------------------------------------------------------------------

@dataclass
class Step:
    user: str
    op: dict
    want: str  # "ok" or an errno name
    by: Optional[str]  # "policy" | "unix" for a refusal

    def show(self) -> str:
        args = ", ".join(f"{k}={oct(v) if k in ('mode', 'umask') else v!r}"
                         for k, v in self.op.items() if k not in ("op", "umask"))
        ids = USERS[self.user]
        return f"{self.user} ({ids[0]}:{ids[1]}): {self.op['op']}({args})"


def S(user: str, op: str, path: str, want: str = "ok", by: Optional[str] = None,
      **kw) -> Step:
    d = {"op": op, "path": path, "umask": 0o022}
    d.update(kw)
    return Step(user, d, want, by if by or want == "ok" else "policy")


def oracle(w: World, s: Step) -> tuple[dict, str, list]:
    """(the result the mount must give, "ok" | "policy" | "unix", the evaluator's verdicts).

    The kernel walks a path one component at a time: it checks the search permission on
    the directory, then asks for the lookup (and the readlink of a symlink it follows). So
    a refused lookup or readlink comes before any Unix check further on: its errno is the
    answer if the user can reach its directory on the twin. The op's own requests come
    after all Unix checks (they are made once the kernel has checked the modes). A step
    the policy refuses runs on a throw-away copy of the twin, which keeps only what the
    allowed steps did."""
    uid, gid, _ = USERS[s.user]
    decided = [(r, w.evaluator.evaluate(r)) for r in Mapper(w.dir("twin"), uid, gid)
               .requests(s.op)]
    deny = next((v for _, v in decided if v.kind == "deny"), None)
    if deny is not None and deny.request.op in ("lookup", "readlink"):
        where = b"/".join(deny.request.path[:-1]).decode()
        reach = w.actor(s.user, "twin").call({"op": "stat", "path": where})
        if reach["rc"]:
            return {"rc": reach["rc"]}, "unix", decided
        return {"rc": deny.errno or "EACCES"}, "policy", decided
    refresh = None if deny is not None else _refused_refresh(w, s, uid, gid)
    if refresh is not None:
        plain = w.actor(s.user, "twin").call(s.op)
        if plain["rc"]:
            return plain, "unix", decided
        return {"rc": refresh}, "policy", decided
    side = "twin"
    if deny is not None:
        side = "trial"
        shutil.rmtree(w.dir("trial"), ignore_errors=True)
        subprocess.run(["cp", "-a", w.dir("twin"), w.dir("trial")], check=True)
    plain = w.actor(s.user, side).call(s.op)
    if plain["rc"]:
        return plain, "unix", decided
    if deny is not None:
        return {"rc": deny.errno or "EACCES"}, "policy", decided
    return plain, "ok", decided


# Ops whose permission check the kernel makes on the object itself (beside the MAY_EXEC
# checks on every directory walked through).
_CHECKED_ON_THE_OBJECT = ("read", "open", "listdir", "write")


def _refused_refresh(w: World, s: Step, uid: int, gid: int) -> Optional[str]:
    """The documented stricter case (docs/security.md, "Where the daemon mount is stricter"):
    on a shared mount the kernel refreshes never-cached attributes with a GETATTR before a
    permission check, on every directory it walks through and on the object of an open,
    and the daemon judges that GETATTR as the stat it cannot be told apart from. The
    errno of the first such stat the policy denies, or None."""
    parts = tuple(p.encode() for p in s.op["path"].split("/") if p)
    checked = [parts[:i] for i in range(1, len(parts))]
    if s.op["op"] in _CHECKED_ON_THE_OBJECT:
        checked.append(parts)
    for path in checked:
        v = w.evaluator.evaluate(Request("getattr", path, uid=uid, gid=gid))
        if v.kind == "deny":
            return v.errno or "EACCES"
    return None


def fmt(r: dict) -> str:
    if r["rc"]:
        return r["rc"]
    return "ok" if r.get("value") is None else f"ok {r['value']}"


def run_case(w: World, steps: list[Step]) -> tuple[list[str], list[str]]:
    """-> (problems, a log line per step)"""
    w.fresh()
    src, twin = w.dir("src"), w.dir("twin")
    problems, log = [], []
    for i, s in enumerate(steps):
        where = f"step {i + 1} {s.show()}"
        want, source, decided = oracle(w, s)
        before = full_snapshot(src)
        got = w.actor(s.user, "mount").call(s.op)
        after = full_snapshot(src)
        line = f"{where}: oracle {fmt(want)} ({source}) / mount {fmt(got)}"
        log.append(line)
        if want["rc"] != (0 if s.want == "ok" else s.want) or \
                (s.want != "ok" and source != s.by):
            problems.append(f"{where}: the case says {s.want} ({s.by or 'ok'}), the oracle "
                            f"{fmt(want)} ({source}); requests:\n      " + "\n      ".join(
                                f"{r.op} {b'/'.join(r.path).decode()}"
                                + (f" to {b'/'.join(r.to).decode()}" if r.to else "")
                                + f" -> {v.decision.short()}" for r, v in decided))
        if got != want:
            problems.append(line)
        if want["rc"] and after != before:
            changed = sorted(k for k in set(before) | set(after)
                             if before.get(k) != after.get(k))
            problems.append(f"{where}: refused, yet the backing tree changed at {changed}")
        real, plain = static_view(src), static_view(twin)
        if real != plain:
            diff = sorted(k for k in set(real) | set(plain) if real.get(k) != plain.get(k))
            problems.append(f"{where}: the backing tree differs from the twin at {diff}")
            break  # later steps would start from different trees
    if not problems:  # root sees, through the mount, what is on the backing tree
        for rel, v in static_view(src).items():
            st = os.lstat(os.path.join(w.dir("mount"), rel))
            if (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                    st.st_gid) != v[:4]:
                problems.append(f"lstat {rel} through the mount (as root) differs from the "
                                f"backing tree")
    return problems, log


def check(w: World, steps: list[Step]) -> None:
    problems, log = run_case(w, steps)
    assert not problems, "\n  ".join(["the mount differs from the oracle:"] + problems) + \
        "\nall steps:\n  " + "\n  ".join(log)


# --- the cases ----------------------------------------------------------------------------

W = ["O_WRONLY"]
CASES = {
    # The same path, one user allowed and another refused; Unix permissions first.
    "read-by-uid-and-user": [
        S("a", "read", "db/data"),                          # the backup user
        S("b", "read", "db/data", "EPERM"),
        S("root", "read", "db/data"),                       # except by uid 0
        S("n", "read", "db/data"),                          # except by user NAME
        S("d", "read", "db/sub/deep", "EPERM"),
        S("a", "read", "db/sub/deep"),
        S("b", "stat", "db/data"),                          # only reading is refused
        S("b", "listdir", "db"),
        S("a", "read", "db/root-only", "EACCES", by="unix"),  # the modes refuse a first
        S("b", "read", "db/root-only", "EACCES", by="unix"),  # ... and b: not EPERM
        S("root", "read", "db/root-only"),
        S("b", "open", "db/data", flags=["O_RDWR"], want="EACCES", by="unix"),
        S("b", "read", "pub/to-db", "EPERM"),               # a symlink gives nothing
        S("a", "read", "pub/to-db"),
        S("b", "read", "pub/../db/./data", "EPERM"),
        S("a", "read", "db/sub/../data"),
    ],
    # Passthrough: a file a may read and b may not. a opens and reads, b at once after.
    "passthrough-read-then-other-user": [
        S("a", "open", "db/data", flags=["O_RDONLY"], read=True),
        S("b", "open", "db/data", flags=["O_RDONLY"], want="EPERM"),
        S("b", "read", "db/data", "EPERM"),
        S("a", "read", "db/data"),
        S("b", "open", "db/data", flags=["O_RDONLY"], want="EPERM"),
        S("b", "read", "pub/note"),                         # decided alike for all:
        S("a", "read", "pub/note"),                         # passthrough
        S("a", "read", "meta/f"),                           # only getattr depends on who
        S("b", "read", "team/doc"),                         # writing depends on who: daemon
        S("a", "read", "team/doc"),
        S("b", "read", "private/f", "ENOENT"),              # hidden from b, read by all others
        S("e", "read", "private/f"),
        S("b", "read", "private/f", "ENOENT"),
        S("b", "read", "pub/to-private", "ENOENT"),
    ],
    # except by uid 0, by group NAME: only root and fsgid NAME change /etc.
    "except-by-root-and-group": [
        S("root", "write", "etc/conf", data="root"),
        S("a", "write", "etc/conf", data="a", want="EROFS"),   # 0666: the modes allow it
        S("c", "write", "etc/mine", data="c", want="EROFS"),   # c's own file
        S("c", "chmod", "etc/mine", mode=0o600, want="EROFS"),
        S("g", "write", "etc/conf", data="g"),                 # the group as fsgid
        S("h", "write", "etc/conf", data="h", want="EROFS"),   # only a supplementary group
        S("a", "create", "etc/new", flags=W, mode=0o644, want="EROFS"),
        S("g", "mkdir", "etc/gdir", mode=0o755),
        S("h", "mkdir", "etc/hdir", mode=0o755, want="EROFS"),
        S("a", "unlink", "etc/conf", "EROFS"),
        S("a", "rename", "etc/conf", to="pub/conf", want="EROFS"),
        S("a", "symlink", "etc/l", target="conf", want="EROFS"),
        S("a", "link", "etc/conf", to="etc/conf2", want="EROFS"),
        S("a", "read", "etc/conf"),
        S("root", "rename", "etc/mine", to="etc/mine2"),
        S("d", "chmod", "etc/mine2", mode=0o600, want="EPERM", by="unix"),  # not the owner
    ],
    # by gid: the fsgid counts; a supplementary group alone does not.
    "by-gid-fsgid-only": [
        S("c", "write", "team/doc", data="c"),                # fsgid 3000
        S("a", "write", "team/doc", data="a", want="EPERM"),  # 3000 supplementary: the modes
        S("b", "open", "team/doc", flags=["O_RDWR"], want="EPERM"),  # allow, the policy not
        S("d", "write", "team/doc", data="d", want="EACCES", by="unix"),  # not in the group
        S("c", "create", "team/c-new", flags=W, mode=0o664, data="c"),
        S("a", "create", "team/a-new", flags=W, mode=0o664, want="EPERM"),
        S("d", "create", "team/d-new", flags=W, mode=0o664, want="EACCES", by="unix"),
        S("c", "read", "team/draft", "EACCES"),               # read at /team/draft by gid 3000
        S("a", "read", "team/draft"),                         # supplementary 3000: no match
        S("b", "read", "team/draft"),
        S("d", "read", "team/draft"),
        S("c", "rename", "team/draft", to="pub/draft", want="EXDEV"),  # no gain by moving
        S("c", "link", "team/draft", to="pub/draft", want="EXDEV"),
        S("a", "rename", "team/c-new", to="pub/c-new", want="EPERM"),
        S("c", "rename", "team/c-new", to="team/c-renamed"),
        S("c", "unlink", "team/c-renamed"),
    ],
    # uid ranges: 2002-2010 inclusive, and the lookups of a range never cached.
    "uid-range-bounds": [
        S("a", "stat", "private/f"),                          # 2001: below
        S("b", "stat", "private/f", "ENOENT"),                # 2002: the low bound
        S("f", "stat", "private/f", "ENOENT"),                # 2010: the high bound
        S("e", "stat", "private/f"),                          # 2011: above
        S("d", "stat", "private/sub/g"),
        S("n", "read", "private/sub/g"),
        S("f", "listdir", "private", "ENOENT"),
        S("b", "lstat", "private", "ENOENT"),
        S("b", "create", "private/b-new", flags=W, mode=0o644, want="ENOENT"),
        S("f", "mkdir", "private/sub/fd", want="ENOENT"),
        S("b", "rename", "pub/to-db", to="private/x", want="ENOENT"),
    ],
    # The kernel's caches: a's allowed lookups, stats and listings never answer b.
    "cache-a-then-b": [
        S("a", "stat", "private/f"),
        S("b", "stat", "private/f", "ENOENT"),
        S("a", "stat", "private/sub/g"),
        S("b", "stat", "private/sub/g", "ENOENT"),
        S("a", "read", "private/f"),
        S("b", "read", "private/f", "ENOENT"),
        S("a", "listdir", "private"),                         # READDIRPLUS hands out entries
        S("b", "stat", "private/sub", "ENOENT"),
        S("b", "stat", "pub/../private/sub/../f", "ENOENT"),
        S("a", "stat", "meta/f"),
        S("b", "stat", "meta/f", "EACCES"),                   # attributes, not the entry
        S("a", "lstat", "meta/l"),
        S("b", "lstat", "meta/l", "EACCES"),
        S("a", "readlink", "meta/l"),
        S("b", "readlink", "meta/l", "EACCES"),
        S("a", "listdir", "meta"),
        S("b", "listdir", "meta"),                            # the directory is not refused
        S("b", "stat", "meta/f", "EACCES"),
        S("a", "stat", "meta/f"),
        # a listing that depends on who asks is never kept in the page cache for all
        S("a", "listdir", "lists"),
        S("b", "listdir", "lists", "EACCES"),
        S("b", "read", "lists/x"),                           # lookups and reads are allowed
        S("a", "listdir", "lists"),
        S("b", "listdir", "lists", "EACCES"),
        S("b", "open", "lists", flags=["O_RDONLY", "O_DIRECTORY"], want="EACCES"),
        S("root", "create", "lists/y", flags=W, mode=0o644),
        S("a", "listdir", "lists"),
        S("b", "listdir", "lists", "EACCES"),
    ],
    # b first: b's refusals leave no (negative) entry that a would meet, in a directory
    # never cached (/private) and in one cached (/mixed).
    "cache-b-then-a": [
        S("b", "stat", "private/f", "ENOENT"),                # no negative entry for a
        S("a", "stat", "private/f"),
        S("b", "stat", "private/sub/g", "ENOENT"),
        S("a", "read", "private/sub/g"),
        S("b", "create", "private/new", flags=W, mode=0o644, want="ENOENT"),
        S("root", "create", "private/new", flags=W, mode=0o644, data="r"),
        S("b", "stat", "private/new", "ENOENT"),
        S("a", "read", "private/new"),
        S("b", "listdir", "private", "ENOENT"),
        S("a", "listdir", "private"),
        S("b", "stat", "meta/f", "EACCES"),
        S("a", "stat", "meta/f"),
        S("b", "stat", "meta/f", "EACCES"),
        S("b", "read", "db/data", "EPERM"),
        S("a", "read", "db/data"),
        S("b", "read", "db/data", "EPERM"),
        S("b", "stat", "mixed/a.key", "ENOENT"),
        S("a", "stat", "mixed/a.key"),
        S("b", "stat", "mixed/dir/b.key", "ENOENT"),
        S("b", "listdir", "mixed/dir"),
        S("a", "read", "mixed/dir/b.key"),
        S("b", "lstat", "mixed/dir/b.key", "ENOENT"),
    ],
    # `deny stat` for b on /meta's entries, nothing else. The language lets b open and
    # read them, but on a shared mount the kernel's permission check first refreshes the
    # (never cached) attributes with a GETATTR the daemon cannot tell from stat(2): the
    # documented stricter case of docs/security.md ("Where the daemon mount is stricter").
    "stat-refused-yet-readable": [
        S("b", "stat", "meta/f", "EACCES"),
        S("b", "read", "meta/f", "EACCES"),                   # stricter: see above
        S("b", "open", "meta/f", "EACCES", flags=["O_RDONLY"]),
        S("b", "listdir", "meta/d", "EACCES"),
        S("a", "read", "meta/f"),                             # a's stat is allowed
    ],
    # A directory the kernel may cache, with names in it that depend on who asks: a's
    # lookups and listings (READDIRPLUS) never give b an entry.
    "cacheable-dir-hidden-names": [
        S("a", "listdir", "mixed"),
        S("b", "stat", "mixed/a.key", "ENOENT"),
        S("b", "stat", "mixed/plain"),
        S("b", "listdir", "mixed"),                          # the names are listed
        S("b", "read", "mixed/a.key", "ENOENT"),
        S("a", "read", "mixed/a.key"),
        S("f", "stat", "mixed/dir/b.key", "ENOENT"),
        S("a", "stat", "mixed/dir/b.key"),
        S("b", "stat", "mixed/dir/b.key", "ENOENT"),
        S("a", "listdir", "mixed/dir"),
        S("b", "write", "mixed/dir/b.key", data="b", want="ENOENT"),
        S("b", "create", "mixed/dir/new.key", flags=W, mode=0o666, want="ENOENT"),
        S("a", "create", "mixed/dir/new.key", flags=W, mode=0o666, data="a"),
        S("b", "stat", "mixed/dir/new.key", "ENOENT"),
        S("b", "rename", "mixed/plain", to="mixed/plain.key", want="ENOENT"),
        S("a", "rename", "mixed/plain", to="mixed/plain.key"),
        S("b", "stat", "mixed/plain.key", "ENOENT"),         # b's entry did not move along
        S("b", "read", "mixed/plain.key", "ENOENT"),
        S("b", "stat", "mixed/plain", "ENOENT", by="unix"),  # gone: the backing tree's ENOENT
        S("e", "read", "mixed/plain.key"),
        S("a", "create", "pub/a-new", flags=W, mode=0o644, data="a"),
        S("b", "stat", "pub/a-new"),                         # cached for everyone
        S("a", "rename", "pub/a-new", to="mixed/a-new.key"),  # ... then moved out of b's sight
        S("b", "stat", "mixed/a-new.key", "ENOENT"),
        S("b", "lstat", "mixed/a-new.key", "ENOENT"),
        S("a", "link", "mixed/a-new.key", to="pub/a-link"),  # nothing gained, for a
        S("b", "stat", "pub/a-link"),                        # a's link, judged by its name
        S("a", "link", "pub/a-link", to="mixed/dir/l.key"),
        S("b", "stat", "mixed/dir/l.key", "ENOENT"),
        S("b", "rename", "mixed/dir", to="mixed/dir2"),      # allowed: b moves what it cannot see
        S("b", "stat", "mixed/dir2/b.key", "ENOENT"),
        S("a", "stat", "mixed/dir2/b.key"),
    ],
}


# The cases about the kernel's caches run with the default cache time and with 30 s; the
# others with 30 s only (the cache can only make a mount looser).
CACHE_CASES = {"passthrough-read-then-other-user", "cache-a-then-b", "cache-b-then-a",
               "cacheable-dir-hidden-names"}
RUNS = [("30", n) for n in CASES] + [("auto", n) for n in CASES if n in CACHE_CASES]
CACHES = pytest.mark.parametrize("cache", ["30", "auto"], ids=["cache-30", "cache-auto"])


@pytest.mark.parametrize("cache,name", RUNS, ids=[f"cache-{c}-{n}" for c, n in RUNS])
def test_case(worlds, cache, name):
    world = worlds(cache)
    check(world, CASES[name])
    if name == "passthrough-read-then-other-user":
        # Both I/O modes were used: the kernel served the opens of files whose reads and
        # writes are decided alike for everyone (pub/note, meta/f), the daemon those of
        # db/data, team/doc and private/f, whose reads or writes depend on who asks.
        m = world.mount
        world.stop()
        opens = re.search(r"opens: (\d+) passthrough, (\d+) daemon", m.stderr())
        # exactly the three opens of pub/note and meta/f went to the kernel
        assert opens and (int(opens[1]), int(opens[2]) > 0) == (3, True), m.stderr()


# --- beyond the step tables ---------------------------------------------------------------

def _verdict(w: World, uid: int, gid: int, op: str, path: str, flags: int = 0) -> str:
    """The evaluator's answer for a path whose every component exists and is a directory or
    a file (no symlinks): "ok" or the first refusal's errno."""
    comps = tuple(_comps(path))
    reqs = [Request("lookup", comps[:i + 1], uid=uid, gid=gid) for i in range(len(comps))]
    reqs.append(Request(op, comps, flags=flags, uid=uid, gid=gid))
    for r in reqs:
        v = w.evaluator.evaluate(r)
        if v.kind == "deny":
            return v.errno or "EACCES"
    return "ok"


FSID_PROBE = """
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid, path, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
libc.setfsgid(gid)
libc.setfsuid(uid)
try:
    if how == "stat":
        os.stat(path)
    else:
        fd = os.open(path, os.O_WRONLY if how == "write" else os.O_RDONLY)
        os.close(fd)
    print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


def test_daemon_trusts_fsuid_and_fsgid(worlds):
    """The subject is the FUSE header's uid and gid: the caller's fsuid and fsgid. A root
    process (real and effective uid 0) that sets its fsuid and fsgid is judged as them."""
    world = worlds("30")
    world.fresh()
    mnt = world.dir("mount")
    problems, wants = [], []
    for uid, gid, how, rel in [(2002, 2002, "stat", "private/f"), (2001, 2001, "stat", "private/f"),
                               (2010, 0, "read", "mixed/a.key"), (0, 0, "read", "mixed/a.key"),
                               (2001, 2001, "write", "etc/conf"), (0, 0, "write", "etc/conf"),
                               (2005, GGID, "write", "etc/conf"), (2002, 2002, "read", "db/data"),
                               (2003, G, "read", "team/draft"), (2003, 2003, "read", "team/draft"),
                               (0, G, "read", "team/draft"),  # root is no exception to `by gid`
                               (0, G, "write", "etc/conf")]:  # ... and matches `except by uid 0`
        op = {"stat": "getattr", "read": "open", "write": "open"}[how]
        flags = os.O_WRONLY if how == "write" else os.O_RDONLY
        want = _verdict(world, uid, gid, op, rel, flags if op == "open" else 0)
        got = subprocess.run([PY, "-c", FSID_PROBE, str(uid), str(gid),
                              os.path.join(mnt, rel), how], capture_output=True, text=True,
                             check=True).stdout.strip()
        wants.append(want)
        if got != want:
            problems.append(f"fsuid {uid} fsgid {gid} (euid 0): {how} {rel}: the evaluator "
                            f"says {want}, the mount {got}")
    assert not problems, "\n".join(problems)
    assert wants == ["ENOENT", "ok", "ENOENT", "ok", "EROFS", "ok", "ok", "EPERM", "EACCES",
                     "ok", "EACCES", "ok"], wants
    assert static_view(world.dir("src")) == static_view(world.dir("twin"))


@CACHES
def test_move_under_a_users_cwd(worlds, cache):
    """b sits in a directory (its cwd) whose entries the kernel may cache, and has stat'ed a
    file in it; root moves the directory into /private, which does not exist for b. b's
    next requests by relative names must be refused at once, although the kernel still
    holds the entries and attributes it gave b a moment ago (--cache 30: for 30 s)."""
    world = worlds(cache)
    world.fresh()
    mnt = world.dir("mount")
    b = Person("b", ".", cwd=os.path.join(mnt, "pub/dd"))
    a = Person("a", ".", cwd=os.path.join(mnt, "pub/dd"))
    try:
        for p in (a, b):
            assert p.call({"op": "stat", "path": "f"})["rc"] == 0
            assert p.call({"op": "read", "path": "f"}) == {"rc": 0, "value": "DD-F"}
        before = full_snapshot(world.dir("src"))
        os.rename(os.path.join(mnt, "pub/dd"), os.path.join(mnt, "private/dd"))
        os.rename(os.path.join(world.dir("twin"), "pub/dd"),
                  os.path.join(world.dir("twin"), "private/dd"))
        got = {}
        for p in (b, a):
            for op in ({"op": "stat", "path": "f"}, {"op": "read", "path": "f"},
                       {"op": "lstat", "path": "f"}, {"op": "stat", "path": "."},
                       {"op": "listdir", "path": "."},
                       {"op": "create", "path": "g", "flags": ["O_WRONLY"], "mode": 0o644}):
                got[p.user, op["op"] + " " + op["path"]] = p.call(op)["rc"]
        uid_b, gid_b, _ = USERS["b"]
        want = {("b", k): "ENOENT" for k in
                ("stat f", "read f", "lstat f", "stat .", "listdir .", "create g")}
        want.update({("a", k): 0 for k in
                     ("stat f", "read f", "lstat f", "stat .", "listdir .", "create g")})
        # the oracle: every one of these is a request on /private/dd or below
        assert _verdict(world, uid_b, gid_b, "getattr", "private/dd/f") == "ENOENT"
        assert got == want, "after the move: " + ", ".join(
            f"{u} {k}: {v or 'ok'}" for (u, k), v in got.items() if want[u, k] != v)
        assert set(full_snapshot(world.dir("src"))) == set(before) - {"pub/dd", "pub/dd/f"} \
            | {"private/dd", "private/dd/f", "private/dd/g"}
    finally:
        a.close()
        b.close()


def test_users_at_once(worlds):
    """a, b, c, e and f ask for the same subject-dependent paths at the same time, 20 times
    each: every answer is the evaluator's for that user, whoever asked a moment before
    (--cache 30)."""
    world = worlds("30")
    world.fresh()
    mnt = world.dir("mount")
    probes = [("stat", "private/f", "getattr"), ("read", "mixed/a.key", "open"),
              ("read", "db/data", "open"), ("stat", "meta/f", "getattr"),
              ("stat", "mixed/dir/b.key", "getattr"), ("read", "team/draft", "open")]
    users = ["a", "b", "e", "f", "c"]
    want = {u: [_verdict(world, USERS[u][0], USERS[u][1], op, rel) for _, rel, op in probes]
            for u in users}
    assert any(v != "ok" for u in users for v in want[u]) and any(
        v == "ok" for u in users for v in want[u])
    results: dict = {}
    people = {u: Person(u, mnt) for u in users}

    def drive(u: str) -> None:
        got = []
        for _ in range(20):
            for how, rel, _ in probes:
                r = people[u].call({"op": how, "path": rel})["rc"]
                got.append("ok" if r == 0 else r)
        results[u] = got

    try:
        threads = [threading.Thread(target=drive, args=(u,)) for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "users still busy after 60 s"
    finally:
        for p in people.values():
            p.close()
    for u in users:
        wrong = sorted({(probes[i % len(probes)][1], v) for i, v in enumerate(results[u])
                        if v != want[u][i % len(probes)]})
        assert not wrong, f"user {u}: want {want[u]}, got {wrong}"
