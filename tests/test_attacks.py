"""The attack corpus (tests/attacks/*.attack) against the reference evaluator and a real mount.

Each attack file holds a policy, a backing tree and cases; a case is a list of syscall steps,
each with the result the mount must give (format: tests/attacks/README.md). Two tests per case:

* test_language: the steps run on a plain directory (the "shadow": only the steps expected to
  succeed, so it holds what the backing tree must hold), and every step is mapped to the
  language requests the kernel makes of the policy for it (lookups along the path as the
  kernel walks it, following symlinks; then the op's own requests: Mapper below). The
  reference evaluator must decide them as the step says: its first deny gives the errno,
  otherwise the step is allowed; `language: DECISION` states a different language verdict
  explicitly where the mount's result differs on purpose.
* test_mount: the same steps through a real `fpol mount` of the file's policy (one mount per
  file; the backing tree is rebuilt before each case). Steps after an `as UID:GID` line run
  as that user (effective ids and groups switched around the step), on both sides. Every step must give its errno; after
  each refused step (and each step marked `unchanged`) the backing tree must be exactly as it
  was (names, types, sizes, modes, owners, mtimes, link counts, contents, xattrs); at the end
  of the case the backing tree must equal the shadow.

`python3 tests/test_attacks.py FILE [CASE]` prints each step with its requests and the
evaluator's decisions.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import shutil
import stat
import sys
import tempfile
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import pytest

from fpol.compiler.cases import CaseSyntaxError, Expectation, mismatch, parse_expectation
from fpol.compiler.diagnostics import Reporter, Span
from fpol.compiler.driver import check
from fpol.compiler.evaluate import Evaluator, Request, Verdict
from fpol.compiler.parser import decode_string
from fpol.runtime import libc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusemount import Mount, missing, snapshot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ATTACKS = Path(__file__).resolve().parent / "attacks"


# --- the format --------------------------------------------------------------------------------

class AttackSyntaxError(ValueError):
    pass


@dataclass
class Step:
    line: int
    text: str
    op: str
    args: list  # decoded: bytes (paths, strings), int (flags, modes, sizes), str (names, words)
    bind: Optional[str]  # `as NAME`
    result: int  # 0 or an errno
    content: Optional[bytes] = None  # `= "..."`: what the step reads
    unchanged: bool = False  # an allowed step that must not change the backing tree
    by: Optional[str] = None  # "kernel" | "fs": refused below the policy
    audit: Optional[bool] = None  # `+audit` / `-audit`: the step is (not) logged
    language: Optional[Expectation] = None  # the language's verdict, stated where it differs
    user: Optional[tuple] = None  # (uid, gid, groups) from an `as` line; None: root

    @property
    def result_name(self) -> str:
        return "ok" if not self.result else errno.errorcode[self.result]


@dataclass
class Case:
    file: "AttackFile"
    name: str
    line: int
    title: str
    steps: list[Step] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.file.path.stem}/{self.name}"

    @property
    def users(self) -> bool:
        return any(s.user for s in self.steps)


@dataclass
class TreeEntry:
    line: int
    path: bytes
    kind: str  # dir | file | symlink | link | xattr | mode | fifo | owner
    value: object = None
    extra: object = None


@dataclass
class AttackFile:
    path: Path
    policy_text: str
    policy_source: str  # the example it came from, or the attack file
    tree: list[TreeEntry]
    cases: list[Case]

    @property
    def policy(self):
        return _compiled(self.policy_text, self.policy_source)


_compiled_cache: dict = {}


def _compiled(text: str, source: str):
    key = (text, source)
    if key not in _compiled_cache:
        result = check(text, source)
        errors = [f"{source}:{d.span.line}:{d.span.column} {d.code} {d.message}"
                  for d in result.diagnostics if d.is_error]
        if errors:
            raise AttackSyntaxError("policy does not compile:\n" + "\n".join(errors))
        _compiled_cache[key] = result.policy
    return _compiled_cache[key]


_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\S+')
_REPEAT = re.compile(r'(\\x[0-9a-fA-F]{2}|\\\\|\\"|[^\\"{}])\{(\d+)\}')


def _tokens(text: str) -> tuple[list[str], Optional[str]]:
    """Words and quoted strings up to a `#` comment; (tokens, comment)."""
    out = []
    for m in _TOKEN.finditer(text):
        if m.group().startswith("#"):
            return out, text[m.start():]
        out.append(m.group())
    return out, None


def _bytes(token: str, line: int) -> bytes:
    """A path or string: bare (UTF-8) or quoted with \\" \\\\ \\xNN (the policy language's
    strings); `C{N}` repeats the character C N times (255-byte names)."""
    token = _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), token)
    if not token.startswith('"'):
        return token.encode("utf-8")
    reporter = Reporter("<attack>")
    value = decode_string(token, Span.point(line, 1), reporter)
    if reporter.items:
        raise AttackSyntaxError(f"line {line}: {reporter.items[0].message}")
    return value


def _flags(token: str, line: int) -> int:
    value = 0
    for part in token.split("|"):
        v = getattr(os, part, None)
        if v is None:
            v = getattr(mmap, part, None)
        if not isinstance(v, int):
            raise AttackSyntaxError(f"line {line}: unknown flag `{part}`")
        value |= v
    return value


# op -> argument kinds: P path, T symlink target (bytes, `$MNT` = the mount's root),
# S string, F descriptor name, M mapping name, N number, O octal mode, X flags,
# W word (xattr name, rename flag), ? optional last argument
ARGS = {
    "open": "P X", "read": "P", "write": "P S", "append": "P S",
    "truncate": "P N", "chmod": "P O", "chown": "P N N", "utime": "P",
    "setxattr": "P W S", "removexattr": "P W", "getxattr": "P W", "listxattr": "P",
    "mkdir": "P", "mknod": "P", "symlink": "T P", "unlink": "P", "rmdir": "P",
    "rename": "P P ?W", "link": "P P",
    "stat": "P", "lstat": "P", "readlink": "P", "listdir": "P",
    "fread": "F", "fwrite": "F S", "ftruncate": "F N", "fchmod": "F O", "futime": "F",
    "fallocate": "F N N ?W", "copy_file_range": "F F N", "reopen": "F X", "flink": "F P",
    "close": "F", "mmap": "F X X", "mread": "M", "mwrite": "M S", "msync": "M",
    "munmap": "M",
}
BINDS = {"open", "reopen", "mmap"}
CONTENT = {"read", "fread", "readlink", "getxattr", "mread"}


def _step(text: str, line: int) -> Step:
    words, comment = _tokens(text)
    if "->" not in words:
        raise AttackSyntaxError(f"line {line}: expected `STEP -> RESULT`")
    cut = words.index("->")
    left, right = words[:cut], words[cut + 1:]
    if not left or left[0] not in ARGS:
        raise AttackSyntaxError(f"line {line}: unknown step `{left[0] if left else ''}`")
    op = left[0]
    bind = None
    if len(left) >= 3 and left[-2] == "as":
        if op not in BINDS:
            raise AttackSyntaxError(f"line {line}: `{op}` binds no name")
        bind, left = left[-1], left[:-2]
    kinds = ARGS[op].split()
    raw = left[1:]
    required = [k for k in kinds if not k.startswith("?")]
    if not len(required) <= len(raw) <= len(kinds):
        raise AttackSyntaxError(f"line {line}: `{op}` takes {ARGS[op]}")
    args = []
    for kind, tok in zip(kinds, raw):
        kind = kind.lstrip("?")
        if kind in "PTS":
            args.append(_bytes(tok, line))
        elif kind == "X":
            args.append(_flags(tok, line))
        elif kind == "N":
            args.append(int(tok))
        elif kind == "O":
            args.append(int(tok, 8))
        else:
            args.append(tok)
    if kinds and kinds[0] == "P" and not args[0].startswith(b"/"):
        raise AttackSyntaxError(f"line {line}: paths start with `/` (the mount root)")
    # right: ok | ERRNO, then = "content", unchanged, by kernel|fs, language: DECISION
    if not right:
        raise AttackSyntaxError(f"line {line}: missing result")
    if right[0] == "ok":
        result = 0
    elif isinstance(getattr(errno, right[0], None), int) and right[0].startswith("E"):
        result = getattr(errno, right[0])
    else:
        raise AttackSyntaxError(f"line {line}: result `{right[0]}` is neither ok nor an errno")
    s = Step(line, text.split(" #")[0].strip(), op, args, bind, result)
    i = 1
    while i < len(right):
        w = right[i]
        if w == "=" and i + 1 < len(right) and op in CONTENT:
            s.content = _bytes(right[i + 1], line)
            i += 2
        elif w == "unchanged":
            s.unchanged = True
            i += 1
        elif w in ("+audit", "-audit"):
            s.audit = w == "+audit"
            i += 1
        elif w == "by" and i + 1 < len(right) and right[i + 1] in ("kernel", "fs"):
            s.by = right[i + 1]
            i += 2
        elif w == "language:":
            try:
                s.language = parse_expectation(right[i + 1:], line)
            except CaseSyntaxError as e:
                raise AttackSyntaxError(f"line {line}: {e.message}") from None
            if not comment:
                raise AttackSyntaxError(f"line {line}: a step whose language verdict differs "
                                        "from the mount's result must say why in a comment")
            break
        else:
            raise AttackSyntaxError(f"line {line}: unexpected `{w}` in the result")
    if s.by and not s.result:
        raise AttackSyntaxError(f"line {line}: `by {s.by}` goes with an errno")
    if s.content is not None and s.result:
        raise AttackSyntaxError(f"line {line}: a refused step reads nothing")
    return s


def _tree_entry(text: str, line: int) -> list[TreeEntry]:
    words, _ = _tokens(text)
    path = _bytes(words[0], line)
    if not path.startswith(b"/"):
        raise AttackSyntaxError(f"line {line}: tree paths start with `/`")
    rest = words[1:]
    if not rest and path.endswith(b"/"):
        return [TreeEntry(line, path.rstrip(b"/"), "dir")]
    if len(rest) == 1 and rest[0].startswith('"'):
        return [TreeEntry(line, path, "file", _bytes(rest[0], line))]
    if len(rest) == 1 and rest[0] == "fifo":
        return [TreeEntry(line, path, "fifo")]
    if len(rest) == 2 and rest[0] == "->":
        return [TreeEntry(line, path, "symlink", _bytes(rest[1], line))]
    if len(rest) == 2 and rest[0] == "link":
        return [TreeEntry(line, path, "link", _bytes(rest[1], line))]
    if len(rest) == 2 and rest[0] == "mode":
        return [TreeEntry(line, path, "mode", int(rest[1], 8))]
    if len(rest) == 2 and rest[0] == "owner" and re.fullmatch(r"\d+:\d+", rest[1]):
        return [TreeEntry(line, path, "owner", tuple(int(x) for x in rest[1].split(":")))]
    if len(rest) == 3 and rest[0] == "xattr":
        return [TreeEntry(line, path, "xattr", rest[1], _bytes(rest[2], line))]
    raise AttackSyntaxError(f"line {line}: tree entries are `PATH/`, `PATH \"content\"`, "
                            "`PATH -> TARGET`, `PATH link OTHER`, `PATH mode 0NNN`, "
                            "`PATH xattr NAME \"value\"`, `PATH owner UID:GID` or `PATH fifo`")


def _user(words: list[str], line: int) -> Optional[tuple]:
    """`as root` or `as UID:GID[:GROUP,...]`: who runs the case's following steps."""
    if words == ["as", "root"]:
        return None
    m = re.fullmatch(r"(\d+):(\d+)(?::(\d+(?:,\d+)*))?", words[1]) if len(words) == 2 else None
    if not m:
        raise AttackSyntaxError(f"line {line}: expected `as root` or `as UID:GID[:GROUP,...]`")
    return int(m[1]), int(m[2]), tuple(int(g) for g in m[3].split(",")) if m[3] else ()


def parse_attack(path: Path) -> AttackFile:
    lines = path.read_text(encoding="utf-8").split("\n")
    policy_text = policy_source = None
    tree: list[TreeEntry] = []
    cases: list[Case] = []
    section = None
    block: list[str] = []
    user = None
    af = AttackFile(path, "", "", tree, cases)
    try:
        for n, raw in enumerate(lines, 1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                if section == "policy" and raw.strip() and raw[0].isspace():
                    block.append(raw)  # comments are part of the policy text
                continue
            if not raw[0].isspace():
                words, _ = _tokens(raw)
                if words[0] == "policy" and len(words) == 2:
                    policy_source = words[1]
                    policy_text = (ROOT / words[1]).read_text(encoding="utf-8")
                    section = None
                elif words == ["policy:"]:
                    section, policy_source = "policy", f"{path.name} (policy)"
                elif words == ["tree:"]:
                    section = "tree"
                elif words[0] == "case" and len(words) >= 2:
                    name, _, title = raw[len("case"):].strip().partition(":")
                    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name.strip()):
                        raise AttackSyntaxError(f"line {n}: case names are [a-z0-9-]")
                    if any(c.name == name.strip() for c in cases):
                        raise AttackSyntaxError(f"line {n}: duplicate case `{name.strip()}`")
                    cases.append(Case(af, name.strip(), n, title.strip()))
                    user = None  # each case starts as root
                    section = "case"
                else:
                    raise AttackSyntaxError(f"line {n}: expected `policy FILE`, `policy:`, "
                                            "`tree:` or `case NAME: title`")
                continue
            if section == "policy":
                block.append(raw)
            elif section == "tree":
                tree.extend(_tree_entry(raw.strip(), n))
            elif section == "case" and _tokens(raw)[0][:1] == ["as"] and "->" not in raw:
                user = _user(_tokens(raw)[0], n)
            elif section == "case":
                cases[-1].steps.append(_step(raw.strip(), n))
                cases[-1].steps[-1].user = user
            else:
                raise AttackSyntaxError(f"line {n}: indented line outside a section")
    except AttackSyntaxError as e:
        raise AttackSyntaxError(f"{path.name}: {e}") from None
    if block:
        policy_text = textwrap.dedent("\n".join(block)) + "\n"
    if policy_text is None:
        raise AttackSyntaxError(f"{path.name}: no policy")
    af.policy_text, af.policy_source = policy_text, policy_source
    for c in cases:
        if not c.steps:
            raise AttackSyntaxError(f"{path.name}:{c.line}: case `{c.name}` has no steps")
    return af


def attack_files() -> list[AttackFile]:
    return [parse_attack(p) for p in sorted(ATTACKS.glob("*.attack"))]


# --- a tree on disk -----------------------------------------------------------------------------

def build(root: bytes, tree: list[TreeEntry], mnt: bytes) -> None:
    """Make the tree under root; `$MNT` in symlink targets is the mount's root (mnt)."""
    os.makedirs(root, exist_ok=True)
    for e in tree:
        p = root + e.path
        if e.kind == "dir":
            os.makedirs(p, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if e.kind == "file":
            with open(p, "wb") as f:
                f.write(e.value)
        elif e.kind == "symlink":
            os.symlink(e.value.replace(b"$MNT", mnt), p)
        elif e.kind == "link":
            os.link(root + e.value, p)
        elif e.kind == "fifo":
            os.mkfifo(p, 0o644)
        elif e.kind == "mode":
            os.chmod(p, e.value)
        elif e.kind == "xattr":
            os.setxattr(p, e.value, e.extra, follow_symlinks=False)
        elif e.kind == "owner":
            os.chown(p, *e.value, follow_symlinks=False)


def clear(root: bytes) -> None:
    for name in os.listdir(root):
        p = os.path.join(root, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def comparable(root: bytes, link_root: bytes) -> dict:
    """A snapshot without times (the mount and the shadow ran at different moments), with
    `$MNT` for link_root in symlink targets."""
    out = {}
    for k, v in snapshot(os.fsdecode(root)).items():
        size, content = v[4], v[7]
        if stat.S_ISLNK(v[0]) and isinstance(content, str):
            content = content.replace(os.fsdecode(link_root), "$MNT")
            size = len(os.fsencode(content))
        out[k] = v[:4] + (size,) + v[6:7] + (content,) + v[8:]
    return out


# --- running steps ---------------------------------------------------------------------------

class World:
    """One directory the steps run on (a mount point or the shadow), with the descriptors
    and mappings the steps named."""

    def __init__(self, root: bytes, link_root: bytes):
        self.root = root
        self.link_root = link_root  # what `$MNT` means in symlink targets made here
        self.fds: dict[str, int] = {}
        self.maps: dict[str, tuple[mmap.mmap, int, bool]] = {}  # mapping, fd dup, shared+write

    def p(self, path: bytes) -> bytes:
        return self.root + path

    def fd(self, name: str) -> int:
        if name not in self.fds:  # an earlier step failed to open it
            raise OSError(errno.EBADF, f"no open descriptor `{name}`")
        return self.fds[name]

    def mapping(self, name: str) -> tuple[mmap.mmap, int, bool]:
        if name not in self.maps:  # an earlier step failed to map it
            raise OSError(errno.EBADF, f"no mapping `{name}`")
        return self.maps[name]

    def close_all(self) -> None:
        for m, dup, _ in self.maps.values():
            m.close()
            os.close(dup)
        for fd in self.fds.values():
            os.close(fd)
        self.maps.clear()
        self.fds.clear()

    # Each op returns what it read (for `= "..."`) or None; failures raise OSError.
    def run(self, s: Step) -> Optional[bytes]:
        a = s.args
        op = s.op
        if op == "open":
            self._bind(s, os.open(self.p(a[0]), a[1], 0o644))
        elif op == "read":
            with open(self.p(a[0]), "rb") as f:
                return f.read()
        elif op in ("write", "append"):
            how = os.O_TRUNC if op == "write" else os.O_APPEND
            fd = os.open(self.p(a[0]), os.O_WRONLY | os.O_CREAT | how, 0o644)
            try:
                os.write(fd, a[1])
            finally:
                os.close(fd)
        elif op == "truncate":
            os.truncate(self.p(a[0]), a[1])
        elif op == "chmod":
            os.chmod(self.p(a[0]), a[1])
        elif op == "chown":
            os.chown(self.p(a[0]), a[1], a[2])
        elif op == "utime":
            os.utime(self.p(a[0]), (1_000_000_000, 1_000_000_000))
        elif op == "setxattr":
            os.setxattr(self.p(a[0]), a[1], a[2])
        elif op == "removexattr":
            os.removexattr(self.p(a[0]), a[1])
        elif op == "getxattr":
            return os.getxattr(self.p(a[0]), a[1])
        elif op == "listxattr":
            os.listxattr(self.p(a[0]))
        elif op == "mkdir":
            os.mkdir(self.p(a[0]))
        elif op == "mknod":
            os.mknod(self.p(a[0]), stat.S_IFIFO | 0o644)
        elif op == "symlink":
            os.symlink(a[0].replace(b"$MNT", self.link_root), self.p(a[1]))
        elif op == "unlink":
            os.unlink(self.p(a[0]))
        elif op == "rmdir":
            os.rmdir(self.p(a[0]))
        elif op == "rename":
            flags = {None: 0, "noreplace": 1, "exchange": 2, "whiteout": 4}[
                a[2] if len(a) > 2 else None]
            if flags:
                libc.renameat2(libc.AT_FDCWD, self.p(a[0]), libc.AT_FDCWD, self.p(a[1]), flags)
            else:
                os.rename(self.p(a[0]), self.p(a[1]))
        elif op == "link":
            os.link(self.p(a[0]), self.p(a[1]), follow_symlinks=False)
        elif op == "stat":
            os.stat(self.p(a[0]))
        elif op == "lstat":
            os.lstat(self.p(a[0]))
        elif op == "readlink":
            return os.readlink(self.p(a[0]))
        elif op == "listdir":
            os.listdir(self.p(a[0]))
        elif op == "fread":
            return os.pread(self.fd(a[0]), 1 << 20, 0)
        elif op == "fwrite":
            os.write(self.fd(a[0]), a[1])
        elif op == "ftruncate":
            os.ftruncate(self.fd(a[0]), a[1])
        elif op == "fchmod":
            os.fchmod(self.fd(a[0]), a[1])
        elif op == "futime":
            os.utime(self.fd(a[0]), (1_000_000_000, 1_000_000_000))
        elif op == "fallocate":
            mode = {None: 0, "keep": 1, "punch": 3}[a[3] if len(a) > 3 else None]
            libc.fallocate(self.fd(a[0]), mode, a[1], a[2])
        elif op == "copy_file_range":
            os.copy_file_range(self.fd(a[0]), self.fd(a[1]), a[2], 0, 0)
        elif op == "reopen":
            self._bind(s, os.open(f"/proc/self/fd/{self.fd(a[0])}", a[1]))
        elif op == "flink":
            # linkat(AT_SYMLINK_FOLLOW) through the magic link; os.link calls plain link(2),
            # which does not follow, unless a directory descriptor is given.
            top = os.open("/", os.O_PATH)
            try:
                os.link(f"/proc/self/fd/{self.fd(a[0])}", self.p(a[1]), src_dir_fd=top,
                        follow_symlinks=True)
            finally:
                os.close(top)
        elif op == "close":
            os.close(self.fds.pop(a[0]))
        elif op == "mmap":
            fd = self.fd(a[0])
            m = mmap.mmap(fd, 0, flags=a[2], prot=a[1])
            shared_write = bool(a[2] & mmap.MAP_SHARED and a[1] & mmap.PROT_WRITE)
            if s.bind:
                self.maps[s.bind] = (m, os.dup(fd), shared_write)
            else:
                m.close()
        elif op == "mread":
            return self.mapping(a[0])[0][:]
        elif op == "mwrite":
            self.mapping(a[0])[0][:len(a[1])] = a[1]
        elif op == "msync":
            self.mapping(a[0])[0].flush()
        elif op == "munmap":
            m, dup, _ = self.maps.pop(self.mapping(a[0]) and a[0])
            m.close()
            os.close(dup)
        else:  # pragma: no cover - ARGS and this table are kept together
            raise AssertionError(op)
        return None

    def _bind(self, s: Step, fd: int) -> None:
        if s.bind:
            if s.bind in self.fds:
                os.close(self.fds[s.bind])
            self.fds[s.bind] = fd
        else:
            os.close(fd)


_PR_SET_DUMPABLE = 4


@contextmanager
def acting_as(user: Optional[tuple]):
    """Run as (uid, gid, groups): effective ids and supplementary groups, restored after.
    None: as we are (root)."""
    if user is None:
        yield
        return
    uid, gid, groups = user
    old = os.getgroups()
    os.setgroups(list(groups))
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(old)
        ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # the euid change cleared it


def attempt(world: World, s: Step) -> tuple[int, Optional[bytes]]:
    try:
        with acting_as(s.user):
            return 0, world.run(s)
    except OSError as e:
        return e.errno, None


@contextmanager
def shadow_dir(case: Case, tmp_path: Path):
    """Where the case's plain directory goes: under tmp_path, or, for a case with steps
    run as other users, under a directory they can reach."""
    if not case.users:
        yield os.fsencode(str(tmp_path / "shadow"))
        return
    base = tempfile.mkdtemp(prefix="fpol-attack-", dir="/tmp")
    os.chmod(base, 0o755)
    try:
        yield os.fsencode(base + "/shadow")
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- the requests a step makes of the policy ------------------------------------------------------

FOLLOWS = {"read", "write", "append", "truncate", "chmod", "chown", "utime", "setxattr",
           "removexattr", "getxattr", "listxattr", "stat", "listdir"}


class Mapper:
    """The language requests a step makes, read off the shadow's state before the step."""

    def __init__(self, world: World):
        self.w = world

    def lstat(self, comps: tuple) -> Optional[os.stat_result]:
        try:
            return os.lstat(self.w.root + b"".join(b"/" + c for c in comps))
        except OSError:
            return None

    def resolve(self, path: bytes, follow: bool) \
            -> tuple[list[Request], tuple, Optional[os.stat_result], bool]:
        """Walk path as the kernel does: a lookup of every component, a readlink of every
        symlink followed. -> (requests, final components, its lstat, whether the walk
        reached the final component)."""
        reqs: list[Request] = []
        todo = [c for c in path.split(b"/")]
        cur: list[bytes] = []
        st = None
        hops = 0
        while todo:
            name = todo.pop(0)
            if name in (b"", b"."):
                continue
            if name == b"..":
                if cur:
                    cur.pop()
                continue
            nxt = tuple(cur) + (name,)
            reqs.append(Request("lookup", nxt))
            st = self.lstat(nxt)
            last = not any(c not in (b"", b".") for c in todo)
            if st is None:
                return reqs, nxt, None, last
            if stat.S_ISLNK(st.st_mode) and (not last or follow):
                hops += 1
                if hops > 40:
                    return reqs, nxt, st, False
                reqs.append(Request("readlink", nxt))
                target = os.readlink(self.w.root + b"".join(b"/" + c for c in nxt))
                if target.startswith(b"/"):
                    if not (target + b"/").startswith(self.w.root + b"/"):
                        raise ValueError(f"symlink {nxt} leaves the tree: {target!r}")
                    target = target[len(self.w.root):]
                    cur = []
                todo = target.split(b"/") + todo
                continue
            if not last and not stat.S_ISDIR(st.st_mode):
                return reqs, nxt, st, False
            cur = list(nxt)
        return reqs, tuple(cur), (st if cur else os.lstat(self.w.root)), True

    def fd_path(self, fd: int) -> tuple:
        target = os.readlink(f"/proc/self/fd/{fd}".encode())
        if target.endswith(b" (deleted)"):  # an unlinked object: judged by the path it had
            target = target[:-len(b" (deleted)")]
        if not (target + b"/").startswith(self.w.root + b"/"):
            raise ValueError(f"descriptor {fd} is outside the tree: {target!r}")
        return tuple(c for c in target[len(self.w.root):].split(b"/") if c)

    def open_requests(self, comps: tuple, st, flags: int) -> list[Request]:
        if flags & os.O_PATH:
            return []  # no FUSE open: an O_PATH descriptor only names the object
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            return []  # a nameless file: no path for the language to judge
        if st is None:
            return [Request("create", comps, flags=flags)] if flags & os.O_CREAT else []
        if flags & os.O_CREAT and flags & os.O_EXCL:
            return []  # the kernel refuses (EEXIST) once the lookup finds it
        if stat.S_ISDIR(st.st_mode):
            return [Request("opendir", comps)]
        return [Request("open", comps, flags=flags & ~os.O_CREAT)]

    def requests(self, s: Step) -> list[Request]:
        a, op = s.args, s.op
        if op in ("open", "read", "write", "append"):
            flags = {"read": os.O_RDONLY, "write": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     "append": os.O_WRONLY | os.O_CREAT | os.O_APPEND}.get(op)
            if flags is None:
                flags = a[1]
            reqs, comps, st, done = self.resolve(a[0], follow=not flags & os.O_NOFOLLOW)
            if not done:
                return reqs
            opened = self.open_requests(comps, st, flags)
            io = {"read": "read", "write": "write", "append": "write"}.get(op)
            return reqs + opened + ([Request(io, comps)] if opened and io else [])
        if op in ("rename", "link"):
            ra, ca, sa, da = self.resolve(a[0], follow=False)
            rb, cb, sb, db = self.resolve(a[1], follow=False)
            reqs = ra + rb
            if not (da and db and sa is not None):
                return reqs
            reqs.append(Request(op, ca, cb))
            if op == "rename" and len(a) > 2 and a[2] == "exchange":
                reqs.append(Request(op, cb, ca))
            if op == "rename" and len(a) > 2 and a[2] == "whiteout":
                reqs.append(Request("mknod", ca))  # the whiteout device left at the old name
            return reqs
        if op == "symlink":
            reqs, comps, st, done = self.resolve(a[1], follow=False)
            return reqs + ([Request("symlink", comps)] if done else [])
        if op in ("mkdir", "mknod"):
            reqs, comps, st, done = self.resolve(a[0], follow=False)
            return reqs + ([Request(op, comps)] if done else [])
        if op in FOLLOWS or op in ("unlink", "rmdir", "lstat", "readlink"):
            reqs, comps, st, done = self.resolve(a[0], follow=op in FOLLOWS)
            if not done or st is None:
                return reqs
            single = {"truncate": ["setattr"], "chmod": ["setattr"], "chown": ["setattr"],
                      "utime": ["setattr"], "stat": ["getattr"], "lstat": ["getattr"],
                      "listdir": ["opendir", "readdir"]}.get(op, [op])
            return reqs + [Request(x, comps) for x in single]
        if op == "flink":
            reqs, cb, sb, db = self.resolve(a[1], follow=False)
            return reqs + ([Request("link", self.fd_path(self.w.fd(a[0])), cb)] if db else [])
        if op == "reopen":
            fd = self.w.fd(a[0])
            return self.open_requests(self.fd_path(fd), os.fstat(fd), a[1])
        if op == "copy_file_range":
            return [Request("copy_file_range", self.fd_path(self.w.fd(a[0])),
                            self.fd_path(self.w.fd(a[1])))]
        fd_op = {"fread": "read", "fwrite": "write", "ftruncate": "setattr",
                 "fchmod": "setattr", "futime": "setattr", "fallocate": "fallocate"}
        if op in fd_op:
            return [Request(fd_op[op], self.fd_path(self.w.fd(a[0])))]
        if op == "msync" and a[0] in self.w.maps and self.w.maps[a[0]][2]:
            # A shared writable mapping's dirty pages are written back to the file.
            return [Request("write", self.fd_path(self.w.maps[a[0]][1]))]
        return []  # close, mmap, mread, mwrite, munmap: nothing the policy sees


def show(r: Request) -> str:
    def p(c):
        text = "/" + "/".join(x.decode("utf-8", "backslashreplace") for x in c)
        return re.sub(r"(.)\1{7,}", lambda m: f"{m.group(1)}{{{len(m.group())}}}", text)
    out = f"{r.op} {p(r.path)}"
    if r.to is not None:
        out += f" to {p(r.to)}"
    if r.flags:
        out += f" flags={r.flags:#o}"
    return out


def verdict_of(decided: list[tuple[Request, Verdict]]) -> Optional[Verdict]:
    """The step's language verdict: its first deny, else its first userspace, else allow."""
    for kind in ("deny", "userspace"):
        for _, v in decided:
            if v.kind == kind:
                return v
    return decided[-1][1] if decided else None


def language_problem(policy, s: Step, decided: list[tuple[Request, Verdict]]) -> Optional[str]:
    """None when the evaluator's verdict is the step's: its errno (or ok); ok for `by fs`
    (the policy allows, the filesystem refuses); the stated one for `language:`."""
    if s.by == "kernel":
        return None  # the kernel refuses before the policy is asked
    v = verdict_of(decided)
    if s.language is None and s.audit is not None \
            and any(v.decision.audit for _, v in decided) != s.audit:
        return f"the language {'does not audit' if s.audit else 'audits'} it"
    if s.language is not None:  # the language's verdict in full, audit flag included
        if v is None:
            return None if s.language.kind == "allow" else "no request reaches the policy"
        return mismatch(policy, s.language, v)
    got = getattr(errno, v.errno or "EACCES", errno.EIO) if v and v.kind == "deny" else 0
    want = 0 if s.by == "fs" else s.result
    if got == want:
        return None
    return f"the language says {v.decision.short() if v else 'nothing (no request)'}"


def brief(data: bytes) -> str:
    return repr(data) if len(data) <= 64 else f"{data[:64]!r}... ({len(data)} bytes)"


# --- playing a case ------------------------------------------------------------------------

def play(case: Case, shadow: bytes, mount: Optional[Mount] = None,
         evaluator: Optional[Evaluator] = None, trace: Callable[[str], None] = None) -> list[str]:
    """Run the case's steps on the shadow (and the mount); returns the problems found."""
    af = case.file
    problems: list[str] = []
    sw = World(shadow, shadow)
    build(shadow, af.tree, shadow)
    mw = None
    if mount is not None:
        mnt = os.fsencode(str(mount.mnt))
        src = os.fsencode(str(mount.source))
        clear(src)
        build(src, af.tree, mnt)
        mw = World(mnt, mnt)
    mapper = Mapper(sw)
    try:
        for s in case.steps:
            where = f"{af.path.name}:{s.line}: {s.text}"
            if evaluator is not None:
                reqs = mapper.requests(s)
                if s.user:  # who is asking: the `as` user's uid and gid (its fsuid, fsgid)
                    reqs = [replace(r, uid=s.user[0], gid=s.user[1]) for r in reqs]
                decided = [(r, evaluator.evaluate(r)) for r in reqs]
                if trace:
                    trace(f"{s.line:4} {s.text}")
                    for r, v in decided:
                        trace(f"       {show(r):60} {v.decision.short()}")
                problem = language_problem(af.policy, s, decided)
                if problem:
                    problems.append(f"{where}\n    {problem}; requests:\n" + "\n".join(
                        f"      {show(r)} -> {v.decision.short()}" for r, v in decided))
            # The shadow holds what the backing tree must hold: it runs the steps that
            # succeed, and those refused below the policy (which must fail the same way).
            if not s.result or s.by:
                got, content = attempt(sw, s)
                if got != s.result:
                    problems.append(f"{where}\n    on a plain directory: "
                                    f"{errno.errorcode.get(got, 'ok') if got else 'ok'}")
                elif s.content is not None and content != s.content:
                    problems.append(f"{where}\n    on a plain directory read {brief(content)}")
            if mw is not None:
                check_backing = bool(s.result) or s.unchanged
                before = snapshot(mount.source) if check_backing else None
                mount.audit()  # skip what earlier steps logged
                got, content = attempt(mw, s)
                logged = mount.audit()
                if s.audit is not None and bool(logged) != s.audit:
                    problems.append(f"{where}\n    the mount " + (
                        "logged nothing" if s.audit else f"logged {logged}"))
                if got != s.result:
                    problems.append(f"{where}\n    the mount says "
                                    f"{errno.errorcode.get(got, got) if got else 'ok'}")
                elif s.content is not None and content != s.content:
                    problems.append(f"{where}\n    the mount read {brief(content)}")
                if check_backing and snapshot(mount.source) != before:
                    problems.append(f"{where}\n    changed the backing tree")
    finally:
        sw.close_all()
        if mw is not None:
            mw.close_all()
    if mw is not None and not problems:
        want, got = comparable(shadow, shadow), comparable(src, mnt)
        if want != got:
            diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            problems.append(f"{af.path.name}: case {case.name}: the backing tree differs from "
                            f"the plain directory at {diff}")
    return problems


# --- tests ---------------------------------------------------------------------------------

FILES = attack_files()
CASES = [c for af in FILES for c in af.cases]


def test_the_corpus_is_complete():
    """Every attack file parses, and the corpus covers every step kind it documents."""
    assert {p.stem for p in ATTACKS.glob("*.attack")} == {af.path.stem for af in FILES}
    used = {s.op for c in CASES for s in c.steps}
    assert used == set(ARGS), f"step kinds never used: {sorted(set(ARGS) - used)}"
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_language(case: Case, tmp_path):
    evaluator = Evaluator(case.file.policy)
    with shadow_dir(case, tmp_path) as shadow:
        problems = play(case, shadow, evaluator=evaluator)
    assert not problems, "\n".join(problems)


_MISSING = missing()


class Mounts:
    """One `fpol mount` per attack file, started on first use; the previous one is
    unmounted when the next file starts (the cases are grouped by file).

    With the kernel's cache on, each case gets a mount of its own: a case rebuilds the
    backing tree behind the mount's back, which a caching mount shows only after its
    timeout (as documented), and stale entries are not what the cases are about."""

    def __init__(self, factory):
        self.factory = factory
        self.current: Optional[tuple[str, Mount]] = None
        self.tmp: Optional[Path] = None  # a base outside the factory's, removed on stop

    def get(self, af: AttackFile, cache: str = "off", case: str = "") -> Mount:
        key = f"{af.path.stem}/{cache}" + (f"/{case}" if cache != "off" else "")
        if self.current and self.current[0] == key:
            return self.current[1]
        self.stop()
        if any(c.users for c in af.cases):  # other users must reach the mount
            base = Path(tempfile.mkdtemp(prefix=f"fpol-attack-{af.path.stem}-", dir="/tmp"))
            os.chmod(base, 0o755)
            self.tmp = base
        else:
            base = self.factory.mktemp(f"attack-{af.path.stem}")
        policy = ROOT / af.policy_source
        if not policy.is_file():  # an inline policy; an example is mounted where it is,
            policy = base / "policy.fpol"  # so that its includes resolve
            policy.write_text(af.policy_text, encoding="utf-8")
        (base / "src").mkdir()
        try:
            m = Mount(policy, base / "src", base / "mnt", base / "audit.log",
                      extra_args=("--cache", cache)).start()
        except BaseException:
            if self.tmp is not None:  # a mount that never came up leaves no directory
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
            raise
        self.current = (key, m)
        return m

    def stop(self) -> None:
        if self.current:
            m = self.current[1]
            self.current = None
            rc = m.stop()
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
            assert rc == 0, f"daemon exited {rc}: {m.stderr()}"


@pytest.fixture(scope="module")
def mounts(tmp_path_factory):
    ms = Mounts(tmp_path_factory)
    try:
        yield ms
    finally:
        ms.stop()


@pytest.mark.skipif(_MISSING is not None, reason=f"real FUSE mounts: {_MISSING}")
@pytest.mark.parametrize("case,cache", [(c, cache) for cache in ("off", "auto") for c in CASES],
                         ids=[f"{c.id}-cache-{cache}" for cache in ("off", "auto") for c in CASES])
def test_mount(case: Case, cache: str, mounts, tmp_path):
    m = mounts.get(case.file, cache, case.id)
    with shadow_dir(case, tmp_path) as shadow:
        problems = play(case, shadow, mount=m)
    if m.proc.poll() is not None:
        problems.append(f"the daemon died: {m.stderr()}")
    assert not problems, "\n".join(problems)


if __name__ == "__main__":  # python3 tests/test_attacks.py FILE [CASE]: the requests of each step
    import tempfile

    want_file, want_case = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
    for af in FILES:
        if af.path.stem != want_file:
            continue
        for c in af.cases:
            if want_case and c.name != want_case:
                continue
            print(f"case {c.name}: {c.title}")
            with tempfile.TemporaryDirectory() as tmp:
                os.chmod(tmp, 0o755)  # steps run `as` other users reach it
                for p in play(c, os.fsencode(tmp + "/shadow"), evaluator=Evaluator(af.policy),
                              trace=print):
                    print("PROBLEM:", p)
