"""`fpol mount` on real FUSE mounts: every example policy enforced through real syscalls.

Each denied request is checked for its errno and for leaving the backing directory exactly
as it was (names, types, sizes, modes, owners, mtimes, link counts, contents, xattrs).
A module-scoped mount per policy keeps the file fast; fixtures always unmount.
Needs root and /dev/fuse (skips naming what is missing).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from fusemount import (EXAMPLES, MOUNT_CMD, ROOT, Mount, errno_of, missing, mount_state,
                       snapshot, wait_gone)
from fpol.runtime.mount import mount as mount_fn, mount_entry

_MISSING = missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"real FUSE mounts: {_MISSING}")

EXE = shutil.which("true") or "/bin/true"
RO, WO, RW = os.O_RDONLY, os.O_WRONLY, os.O_RDWR
CREAT, TRUNC, APPEND, EXCL = os.O_CREAT, os.O_TRUNC, os.O_APPEND, os.O_EXCL


def build(root: Path, tree: dict) -> None:
    """tree: relative path -> bytes (file), None (directory), "EXE" (a runnable program),
    ("symlink", target)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in tree.items():
        p = root / rel
        if content is None:
            p.mkdir(parents=True, exist_ok=True)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        if content == "EXE":
            shutil.copy2(EXE, p)
        elif isinstance(content, tuple):
            os.symlink(content[1], p)
        else:
            p.write_bytes(content)


@contextmanager
def mounted(tmp_path_factory, name: str, tree: dict, policy: Path = None, **kw):
    base = tmp_path_factory.mktemp(name)
    build(base / "src", tree)
    m = Mount(policy or EXAMPLES / f"{name}.fpol", base / "src", base / "mnt",
              base / "audit.log", **kw)
    m.start()
    try:
        yield m
    finally:
        rc = m.stop()  # always unmounted, even when the test failed
    assert rc == 0, f"daemon exited {rc}: {m.stderr()}"
    assert mount_entry(str(m.mnt)) is None


def denied(m: Mount, err: int, fn, *args, **kw) -> None:
    """fn(*args) fails with err through the mount, and the backing tree is unchanged."""
    before = snapshot(m.source)
    got = errno_of(fn, *args, **kw)
    assert got == err, f"{fn.__name__}{args}: expected {errno.errorcode[err]}, got " \
                       f"{errno.errorcode.get(got, got) if got else 'success'}"
    assert snapshot(m.source) == before, f"{fn.__name__}{args} changed the backing tree"


def allowed(fn, *args, **kw):
    got = errno_of(fn, *args, **kw)
    assert got == 0, f"{fn.__name__}{args}: expected success, got {errno.errorcode.get(got)}"


def open_close(path, flags, mode=0o644, data: bytes = None):
    fd = os.open(path, flags, mode)
    try:
        if data is not None:
            os.write(fd, data)
    finally:
        os.close(fd)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def line_of(m: Mount, rule: str) -> int:
    """The line of the policy statement that starts with `rule` (examples get reformatted)."""
    for n, text in enumerate(Path(m.policy).read_text().splitlines(), 1):
        if text.strip().startswith(rule):
            return n
    raise AssertionError(f"no `{rule}` in {m.policy}")


def run(path) -> int:
    """0 if the program ran, else the errno execve failed with."""
    try:
        return subprocess.run([path], timeout=10).returncode
    except OSError as e:
        return e.errno


# --- secrets.fpol ------------------------------------------------------------------------------

SECRETS_TREE = {
    "a.txt": b"hello", "pub/doc.txt": b"doc", "secret/plain.txt": b"plain",
    "secret/keys/k.key": b"KEY", "secret/keys/denied.key": b"NO",
    "secret/keys/broken.key": b"B", "secret/tmp/x.key": b"copy",
    "secret/tmp/notes.txt": b"notes", "secret/sub": None,
}


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    with mounted(tmp_path_factory, "secrets", SECRETS_TREE) as m:
        os.setxattr(m.backing("secret/plain.txt"), "user.tag", b"t")
        yield m


@pytest.mark.parametrize("rel,flags,err", [
    ("pub/doc.txt", RO, 0), ("pub/doc.txt", WO, 0), ("pub/doc.txt", RW, 0),
    ("pub/doc.txt", WO | APPEND, 0),
    ("secret/plain.txt", RO, 0), ("secret/plain.txt", WO, errno.EPERM),
    ("secret/plain.txt", RW, errno.EPERM), ("secret/plain.txt", RO | TRUNC, errno.EPERM),
    ("secret/plain.txt", WO | APPEND, errno.EPERM), ("secret/plain.txt", WO | TRUNC, errno.EPERM),
    ("secret/tmp/x.key", RO, errno.EACCES), ("secret/tmp/x.key", WO, errno.EPERM),
    ("secret/tmp/notes.txt", RO, 0), ("secret/keys/k.key", RO, 0),
    ("secret/keys/k.key", WO, errno.EPERM),
])
def test_secrets_open_by_access_mode(secrets, rel, flags, err):
    if err:
        denied(secrets, err, os.open, secrets.path(rel), flags)
    else:
        allowed(os.open, secrets.path(rel), flags)


def test_secrets_writes_under_secret_are_refused(secrets):
    m = secrets
    p = m.path
    for fn, args in [
        (os.truncate, (p("secret/plain.txt"), 0)),
        (os.chmod, (p("secret/plain.txt"), 0o600)),
        (os.chown, (p("secret/plain.txt"), 1, 1)),
        (os.utime, (p("secret/plain.txt"), (1, 1))),
        (os.setxattr, (p("secret/plain.txt"), "user.a", b"1")),
        (os.removexattr, (p("secret/plain.txt"), "user.tag")),
        (os.mkdir, (p("secret/newdir"),)),
        (os.mknod, (p("secret/fifo"), stat.S_IFIFO | 0o600)),
        (os.symlink, ("x", p("secret/ln"))),
        (os.unlink, (p("secret/plain.txt"),)),
        (os.rmdir, (p("secret/sub"),)),
        (os.rename, (p("secret/plain.txt"), p("pub/p.txt"))),
        (os.rename, (p("pub/doc.txt"), p("secret/doc.txt"))),
        (os.rename, (p("secret/sub"), p("secret/sub2"))),
        (os.link, (p("pub/doc.txt"), p("secret/l"))),
        (open_close, (p("secret/new.txt"), WO | CREAT)),
    ]:
        denied(m, errno.EPERM, fn, *args)


def test_secrets_the_same_writes_work_outside(secrets):
    m = secrets
    p = m.path
    open_close(p("pub/w.txt"), WO | CREAT, data=b"12345")
    os.truncate(p("pub/w.txt"), 2)
    os.chmod(p("pub/w.txt"), 0o600)
    os.chown(p("pub/w.txt"), 1, 2)
    os.utime(p("pub/w.txt"), (1000, 2000))
    os.setxattr(p("pub/w.txt"), "user.a", b"1")
    os.mkdir(p("pub/d"))
    os.mknod(p("pub/d/fifo"), stat.S_IFIFO | 0o640)
    os.symlink("../w.txt", p("pub/d/ln"))
    os.link(p("pub/w.txt"), p("pub/d/hard"))
    os.rename(p("pub/d/hard"), p("pub/d/hard2"))
    st = os.lstat(m.backing("pub/w.txt"))
    assert (st.st_size, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == \
        (2, 0o600, 1, 2, 2000)
    assert st.st_nlink == 2 and read(m.backing("pub/d/hard2")) == b"12"
    assert os.getxattr(m.backing("pub/w.txt"), "user.a") == b"1"
    assert stat.S_ISFIFO(os.lstat(m.backing("pub/d/fifo")).st_mode)
    assert stat.S_IMODE(os.lstat(m.backing("pub/d/fifo")).st_mode) == 0o640
    assert os.readlink(m.backing("pub/d/ln")) == "../w.txt"
    assert read(p("pub/d/ln")) == b"12"
    for name in ("fifo", "ln", "hard2"):
        os.unlink(p(f"pub/d/{name}"))
    os.rmdir(p("pub/d"))
    os.removexattr(p("pub/w.txt"), "user.a")
    assert os.listxattr(m.backing("pub/w.txt")) == []
    os.unlink(p("pub/w.txt"))
    assert sorted(os.listdir(m.backing("pub"))) == ["doc.txt"]


def test_secrets_link_out_of_secret_is_exdev(secrets):
    # link is `write` only at its destination, so both ends allow it, but /pub would
    # give the file write access it lacks under /secret: no gain by moving.
    denied(secrets, errno.EXDEV, os.link, secrets.path("secret/plain.txt"),
           secrets.path("pub/escape"))


def test_secrets_key_names_and_symlinks_into_the_tree(secrets):
    m = secrets
    os.symlink("../secret/tmp/x.key", m.path("pub/to-x"))
    os.symlink("../secret/keys/k.key", m.path("pub/to-k"))
    try:
        denied(m, errno.EACCES, os.open, m.path("pub/to-x"), RO)  # judged at the target
        denied(m, errno.EPERM, os.open, m.path("pub/to-k"), WO)
        m.audit()
        assert read(m.path("pub/to-k")) == b"KEY"
        assert {r["path"] for r in m.audit()} == {"/secret/keys/k.key"}
        assert read(m.path("secret/tmp/notes.txt")) == b"notes"
    finally:
        os.unlink(m.path("pub/to-x"))
        os.unlink(m.path("pub/to-k"))


def test_secrets_listing_keys_is_refused(secrets):
    m = secrets
    denied(m, errno.EACCES, os.listdir, m.path("secret/keys"))
    assert sorted(os.listdir(m.path("secret"))) == ["keys", "plain.txt", "sub", "tmp"]
    assert os.stat(m.path("secret/keys/k.key")).st_size == 3


def test_secrets_userspace_reads_are_performed_and_logged(secrets):
    m = secrets
    m.audit()
    assert read(m.path("secret/keys/k.key")) == b"KEY"
    records = m.audit()
    ops = {(r["op"], r["decision"], r.get("mode"), r["path"]) for r in records}
    assert ("open", "userspace", "before", "/secret/keys/k.key") in ops
    assert ("read", "userspace", "before", "/secret/keys/k.key") in ops
    assert all(r["pid"] for r in records)
    assert all(r["rule"]["line"] == line_of(m, "redirect read") for r in records)


# --- a user handler ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vault(tmp_path_factory):
    log = tmp_path_factory.mktemp("handler") / "events.jsonl"
    os.environ["FPOL_TEST_HANDLER_LOG"] = str(log)
    try:
        with mounted(tmp_path_factory, "secrets", SECRETS_TREE,
                     handler=str(ROOT / "tests" / "mount_handlers.py") + ":vault") as m:
            yield m, log
    finally:
        del os.environ["FPOL_TEST_HANDLER_LOG"]


def test_user_handler_refuses_and_allows(vault):
    import json

    m, log = vault
    denied(m, errno.EPERM, os.open, m.path("secret/keys/denied.key"), RO)
    denied(m, errno.EIO, os.open, m.path("secret/keys/broken.key"), RO)  # fails closed
    assert read(m.path("secret/keys/k.key")) == b"KEY"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    shown = {(e["op"], e["path"], e["mode"]) for e in events}
    assert ("open", "/secret/keys/denied.key", "before") in shown
    assert ("read", "/secret/keys/k.key", "before") in shown
    assert all(e["pid"] > 0 and e["rule"]["line"] == line_of(m, "redirect read")
               for e in events)
    refusals = [r for r in m.audit() if r["errno"]]
    assert {(r["path"], r["errno"]) for r in refusals} == {
        ("/secret/keys/denied.key", "EPERM"), ("/secret/keys/broken.key", "EIO")}
    assert "handler bug" in m.stderr()


# --- uploads.fpol ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    tree = {"uploads/a.txt": b"a", "uploads/sub/b.txt": b"b", "uploads/prog": "EXE",
            "prog": "EXE", "prog2": "EXE", "x.txt": b"x"}
    with mounted(tmp_path_factory, "uploads", tree) as m:
        yield m


def test_uploads_nothing_executes(uploads):
    m = uploads
    assert run(m.path("prog")) == 0
    assert run(m.path("uploads/prog")) == errno.EACCES
    # but the file can be read (copied away, then judged by the normal rules)
    assert read(m.path("uploads/prog")) == read(EXE)


def test_uploads_executable_names_are_not_created(uploads):
    m = uploads
    for name in ("evil.sh", "x.exe", ".htaccess", "a.php"):
        denied(m, errno.EPERM, open_close, m.path(f"uploads/{name}"), WO | CREAT)
    denied(m, errno.EPERM, os.mkdir, m.path("uploads/dir.cgi"))
    denied(m, errno.EPERM, os.rename, m.path("uploads/a.txt"), m.path("uploads/a.sh"))
    open_close(m.path("uploads/ok.txt"), WO | CREAT, data=b"ok")
    assert read(m.backing("uploads/ok.txt")) == b"ok"
    # Names are bytes: RUN.SH passes the name rule, and the exec rule still stops it.
    open_close(m.path("uploads/RUN.SH"), WO | CREAT, 0o755, data=read(EXE))
    assert run(m.path("uploads/RUN.SH")) == errno.EACCES
    os.unlink(m.path("uploads/RUN.SH"))
    os.unlink(m.path("uploads/ok.txt"))


def test_uploads_no_links(uploads):
    m = uploads
    denied(m, errno.EPERM, os.link, m.path("uploads/a.txt"), m.path("uploads/a2"))
    denied(m, errno.EPERM, os.link, m.path("x.txt"), m.path("uploads/x2"))
    denied(m, errno.EPERM, os.symlink, "/etc/passwd", m.path("uploads/pw"))


def test_uploads_root_stays(uploads):
    m = uploads
    denied(m, errno.EPERM, os.rmdir, m.path("uploads"))
    denied(m, errno.EPERM, os.rename, m.path("uploads"), m.path("up2"))


def test_uploads_moving_out_gains_exec_so_exdev(uploads):
    m = uploads
    denied(m, errno.EXDEV, os.rename, m.path("uploads/sub"), m.path("sub2"))
    denied(m, errno.EXDEV, os.rename, m.path("uploads/a.txt"), m.path("a.txt"))


def test_uploads_moving_in_makes_it_stricter(uploads):
    m = uploads
    os.rename(m.path("prog2"), m.path("uploads/prog2"))
    assert os.path.exists(m.backing("uploads/prog2"))
    assert run(m.path("uploads/prog2")) == errno.EACCES  # the moved node got the new class


def test_uploads_deletes_are_audited(uploads):
    m = uploads
    open_close(m.path("uploads/tmp.txt"), WO | CREAT)
    m.audit()
    os.unlink(m.path("uploads/tmp.txt"))
    records = m.audit()
    assert [(r["op"], r["path"], r["decision"], r["rule"]["line"]) for r in records] == \
        [("unlink", "/uploads/tmp.txt", "allow", line_of(m, "audit delete"))]


# --- home.fpol ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def home(tmp_path_factory):
    tree = {"home/alice/.ssh/authorized_keys": b"ssh-ed25519 AAA",
            "home/alice/.ssh/id_rsa": b"PRIVATE", "home/alice/.ssh/known_hosts": b"host1\n",
            "home/alice/notes.txt": b"notes", "home/bob": None}
    with mounted(tmp_path_factory, "home", tree) as m:
        yield m


def test_home_directories_stay_put(home):
    m = home
    denied(m, errno.EPERM, os.mkdir, m.path("home/carol"))
    denied(m, errno.EPERM, os.rmdir, m.path("home/bob"))
    denied(m, errno.EPERM, os.rename, m.path("home/bob"), m.path("home/bobby"))
    denied(m, errno.EPERM, os.rename, m.path("home"), m.path("h"))
    denied(m, errno.EPERM, open_close, m.path("home/file"), WO | CREAT)


def test_home_ssh_is_provisioned(home):
    m = home
    ssh = "home/alice/.ssh"
    denied(m, errno.EPERM, open_close, m.path(f"{ssh}/authorized_keys"), WO | APPEND)
    denied(m, errno.EPERM, os.chmod, m.path(ssh), 0o777)
    denied(m, errno.EPERM, os.rename, m.path(ssh), m.path("home/alice/.ssh2"))
    denied(m, errno.EPERM, open_close, m.path(f"{ssh}/new"), WO | CREAT)
    denied(m, errno.EPERM, os.unlink, m.path(f"{ssh}/id_rsa"))
    denied(m, errno.EPERM, os.rename, m.path("home/alice/notes.txt"), m.path(f"{ssh}/notes"))
    open_close(m.path(f"{ssh}/known_hosts"), WO | APPEND, data=b"host2\n")
    assert read(m.backing(f"{ssh}/known_hosts")) == b"host1\nhost2\n"
    open_close(m.path(f"{ssh}/known_hosts.old"), WO | CREAT, data=b"old")
    os.unlink(m.path(f"{ssh}/known_hosts.old"))


def test_home_key_reads_are_audited(home):
    m = home
    m.audit()
    assert read(m.path("home/alice/.ssh/id_rsa")) == b"PRIVATE"
    assert read(m.path("home/alice/.ssh/known_hosts")).startswith(b"host1")
    records = m.audit()
    # The audit rule is in the file home.fpol includes; the log names that file.
    shared = EXAMPLES / "common" / "credentials.fpol"
    rule = next(n for n, text in enumerate(shared.read_text().splitlines(), 1)
                if text.startswith('audit read matching "$home/.ssh/'))
    assert {(r["op"], r["path"], r["rule"]["line"], r["rule"]["file"]) for r in records} >= \
        {("open", "/home/alice/.ssh/id_rsa", rule, str(shared)),
         ("read", "/home/alice/.ssh/id_rsa", rule, str(shared))}
    assert all(r["path"] == "/home/alice/.ssh/id_rsa" for r in records)


@pytest.mark.parametrize("name", ["with space.txt", "naïve ünïcödé.txt", "日本語のファイル",
                                  "x" * 255, "é" * 127, "tab\tand\nnewline"])
def test_home_odd_names(home, name):
    m = home
    p = m.path(f"home/alice/{name}")
    open_close(p, WO | CREAT, data=name.encode())
    assert read(p) == name.encode() and read(m.backing(f"home/alice/{name}")) == name.encode()
    assert name in os.listdir(m.path("home/alice"))
    os.rename(p, p + "2" if len(name.encode()) < 255 else m.path("home/alice/short"))
    os.unlink(p + "2" if len(name.encode()) < 255 else m.path("home/alice/short"))
    denied(m, errno.EPERM, open_close, m.path(f"home/alice/.ssh/{name}"), WO | CREAT)


def test_home_name_too_long(home):
    assert errno_of(open_close, home.path("home/alice/" + "y" * 256), WO | CREAT) == \
        errno.ENAMETOOLONG


def test_home_deep_tree(home):
    m = home
    rel = "home/alice/" + "/".join(f"d{i}" for i in range(40))
    os.makedirs(m.path(rel))
    open_close(m.path(rel + "/bottom.txt"), WO | CREAT, data=b"deep")
    assert read(m.backing(rel + "/bottom.txt")) == b"deep"
    os.rename(m.path("home/alice/d0"), m.path("home/alice/e0"))
    assert read(m.path(rel.replace("d0", "e0", 1) + "/bottom.txt")) == b"deep"
    shutil.rmtree(m.path("home/alice/e0"))
    assert not os.path.exists(m.backing("home/alice/e0"))


# --- readonly-system.fpol -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sysro(tmp_path_factory):
    tree = {"usr/bin/tool": b"tool", "usr/local/bin/mine": b"mine", "boot/vmlinuz-6": "EXE",
            "boot/grub.cfg": b"cfg", "etc/passwd": b"root:x:0:0", "etc/machine-state/dhcp": b"d",
            "etc/machine-id": b"0123", "var/log/x": b"log", "bin/run": "EXE"}
    with mounted(tmp_path_factory, "readonly-system", tree) as m:
        yield m


def test_sysro_image_is_read_only(sysro):
    m = sysro
    for fn, args in [(open_close, (m.path("usr/bin/tool"), WO)),
                     (os.truncate, (m.path("usr/bin/tool"), 0)),
                     (open_close, (m.path("usr/bin/new"), WO | CREAT)),
                     (os.mknod, (m.path("usr/fifo"), stat.S_IFIFO | 0o600)),
                     (os.setxattr, (m.path("usr/bin/tool"), "user.x", b"1")),
                     (os.rename, (m.path("usr/local/bin/mine"), m.path("usr/bin/mine"))),
                     (os.truncate, (m.path("etc/passwd"), 0)),
                     (open_close, (m.path("boot/grub.cfg"), RW))]:
        denied(m, errno.EROFS, fn, *args)
    assert read(m.path("usr/bin/tool")) == b"tool"


def test_sysro_writable_parts(sysro):
    m = sysro
    open_close(m.path("usr/local/bin/mine"), WO | TRUNC, data=b"mine2")
    os.mkdir(m.path("usr/local/newdir"))
    os.mknod(m.path("var/fifo"), stat.S_IFIFO | 0o600)
    os.setxattr(m.path("var/log/x"), "user.x", b"1")
    m.audit()
    open_close(m.path("etc/machine-state/new"), WO | CREAT, data=b"n")
    open_close(m.path("etc/machine-id"), WO | TRUNC, data=b"4567")
    records = m.audit()
    state, ident = (line_of(m, "audit write under /etc/machine-state"),
                    line_of(m, "audit write at /etc/machine-id"))
    assert {(r["op"], r["path"], r["rule"]["line"]) for r in records} == {
        ("create", "/etc/machine-state/new", state), ("write", "/etc/machine-state/new", state),
        ("open", "/etc/machine-id", ident), ("write", "/etc/machine-id", ident)}
    assert read(m.backing("etc/machine-id")) == b"4567"
    assert read(m.backing("usr/local/bin/mine")) == b"mine2"


def test_sysro_kernel_images_never_run(sysro):
    assert run(sysro.path("boot/vmlinuz-6")) == errno.EACCES
    assert run(sysro.path("bin/run")) == 0


# --- complain.fpol ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def buildbox(tmp_path_factory):
    tree = {"build/src.c": b"int main;", "build/.git/hooks/pre-commit": b"#!/bin/sh",
            "etc/hosts": b"h", "tmp": None}
    with mounted(tmp_path_factory, "complain", tree) as m:
        yield m


def test_complain_mode_allows_and_audits(buildbox):
    m = buildbox
    m.audit()
    open_close(m.path("etc/new.conf"), WO | CREAT, data=b"c")
    open_close(m.path("build/.git/hooks/pre-commit"), WO | APPEND, data=b"\necho hi")
    open_close(m.path("build/out.o"), WO | CREAT, data=b"o")
    records = m.audit()
    complained = {(r["op"], r["path"], r["errno"], r["rule"]["line"]) for r in records
                  if r.get("complained")}
    assert ("create", "/etc/new.conf", "EPERM", line_of(m, "default deny")) in complained
    assert ("open", "/build/.git/hooks/pre-commit", "EACCES",
            line_of(m, "deny all under /build/.git/hooks")) in complained
    assert not any(r["path"] == "/build/out.o" for r in records)
    assert read(m.backing("etc/new.conf")) == b"c"


# --- android-media.fpol (case-insensitive names) -------------------------------------------------

@pytest.fixture(scope="module")
def media(tmp_path_factory):
    tree = {"storage/emulated/DCIM/p.jpg": b"jpg", "storage/emulated/Android/data/com.app/f.txt":
            b"f", "storage/emulated/Download/prog": "EXE", "storage/1A2B-3C4D/android": None,
            "storage/emulated/Music": None}
    with mounted(tmp_path_factory, "android-media", tree) as m:
        yield m


def test_media_shared_storage_rules(media):
    m = media
    assert run(m.path("storage/emulated/Download/prog")) == errno.EACCES
    denied(m, errno.EPERM, os.mknod, m.path("storage/emulated/fifo"), stat.S_IFIFO | 0o600)
    denied(m, errno.EPERM, os.symlink, "x", m.path("storage/emulated/ln"))
    denied(m, errno.EPERM, os.link, m.path("storage/emulated/DCIM/p.jpg"),
           m.path("storage/emulated/p2.jpg"))
    denied(m, errno.EOPNOTSUPP, os.setxattr, m.path("storage/emulated/DCIM/p.jpg"),
           "user.x", b"1")
    denied(m, errno.EPERM, os.rmdir, m.path("storage/emulated/Android"))
    denied(m, errno.EPERM, os.rmdir, m.path("storage/1A2B-3C4D/android"))  # case folded
    denied(m, errno.EXDEV, os.rename, m.path("storage/emulated/Download/prog"), m.path("prog"))
    os.rmdir(m.path("storage/emulated/Music"))


def test_media_userspace_lookups_opens_and_listings_are_logged(media):
    m = media
    m.audit()
    assert read(m.path("storage/emulated/Android/data/com.app/f.txt")) == b"f"
    assert read(m.path("storage/emulated/DCIM/p.jpg")) == b"jpg"
    assert os.listdir(m.path("storage/emulated/Android/data")) == ["com.app"]
    got = {(r["op"], r["path"], r["mode"]) for r in m.audit() if r["decision"] == "userspace"}
    assert ("lookup", "/storage/emulated/Android/data/com.app", "instead") in got
    assert ("lookup", "/storage/emulated/Android/data/com.app/f.txt", "instead") in got
    assert ("open", "/storage/emulated/DCIM/p.jpg", "before") in got
    assert ("readdir", "/storage/emulated/Android/data", "after") in got


# --- a policy written for the mount tests ---------------------------------------------------

CUSTOM = """\
policy custom
deny read named "*.key"
deny write under /ro with EROFS
deny lookup at /ro/hidden with ENOENT
deny lookup at /w/new.key with ENOENT
deny create under /nocreate with EPERM
deny delete under /keep
audit write under /logged
"""

CUSTOM_TREE = {"w/a.txt": b"a", "w/b.key": b"b", "w/sub/c.txt": b"c", "ro/a.txt": b"ro",
               "ro/hidden/h.txt": b"h", "ro/sub": None, "nocreate/a.txt": b"n",
               "keep/a.txt": b"k", "keep/sub": None, "logged/a.txt": b"l"}


@pytest.fixture(scope="module")
def custom_policy(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("policy") / "custom.fpol"
    p.write_text(CUSTOM)
    return p


@pytest.fixture(scope="module")
def custom(tmp_path_factory, custom_policy):
    with mounted(tmp_path_factory, "custom", CUSTOM_TREE, policy=custom_policy) as m:
        yield m


def test_created_key_is_not_readable(custom):
    # New objects take the class of their own name, not their directory's: creating
    # new.key and reading it must not bypass `deny read named "*.key"`.
    m = custom
    open_close(m.path("w/fresh.key"), WO | CREAT | EXCL, data=b"secret")
    denied(m, errno.EACCES, os.open, m.path("w/fresh.key"), RO)
    denied(m, errno.EACCES, open_close, m.path("w/other.key"), RW | CREAT)
    os.rename(m.path("w/a.txt"), m.path("w/a.key"))  # moving into a stricter name: fine
    denied(m, errno.EACCES, os.open, m.path("w/a.key"), RO)
    denied(m, errno.EXDEV, os.rename, m.path("w/a.key"), m.path("w/a.txt"))
    denied(m, errno.EXDEV, os.link, m.path("w/fresh.key"), m.path("w/fresh.txt"))
    os.link(m.path("w/sub/c.txt"), m.path("w/sub/c.key"))  # a second, stricter name
    assert read(m.path("w/sub/c.txt")) == b"c"
    denied(m, errno.EACCES, os.open, m.path("w/sub/c.key"), RO)
    os.unlink(m.path("w/sub/c.key"))
    os.unlink(m.path("w/fresh.key"))


def test_hidden_name(custom):
    m = custom
    denied(custom, errno.ENOENT, os.stat, m.path("ro/hidden"))
    denied(custom, errno.ENOENT, os.open, m.path("ro/hidden/h.txt"), RO)
    assert "hidden" in os.listdir(m.path("ro"))  # listing is not lookup (as in fuse-bpf)


def test_a_hidden_name_is_never_created_over_or_replaced(tmp_path_factory):
    # The kernel treats a lookup denied with ENOENT as "no such name" and goes on to
    # CREATE/RENAME/MKDIR; the daemon must not then open, truncate or replace the object.
    policy = tmp_path_factory.mktemp("hide") / "hide.fpol"
    policy.write_text("policy hide\ndeny lookup at /data/secret with ENOENT\n")
    with mounted(tmp_path_factory, "hide", {"data/secret": b"TOP", "data/x": b"x"},
                 policy=policy) as m:
        secret = m.path("data/secret")
        denied(m, errno.ENOENT, os.open, secret, RO)
        denied(m, errno.EEXIST, open_close, secret, WO | CREAT | TRUNC, data=b"overwritten")
        denied(m, errno.EEXIST, os.rename, m.path("data/x"), secret)
        denied(m, errno.EEXIST, os.mkdir, secret)
        denied(m, errno.EEXIST, os.symlink, "t", secret)
        denied(m, errno.EEXIST, os.link, m.path("data/x"), secret)
        os.rename(m.path("data/x"), m.path("data/y"))  # an unseen but absent name is fine
        open_close(m.path("data/x"), WO | CREAT, data=b"new")
        os.rename(m.path("data/y"), m.path("data/x"))  # and a seen one is replaced
        assert read(m.backing("data/x")) == b"x" and read(m.backing("data/secret")) == b"TOP"


def test_size_and_mtime_after_writes_through_passthrough(custom):
    m = custom
    p, b = m.path("w/size.bin"), m.backing("w/size.bin")
    fd = os.open(p, RW | CREAT)
    try:
        os.write(fd, b"x" * 4096)
        assert os.fstat(fd).st_size == os.stat(p).st_size == os.stat(b).st_size == 4096
        os.utime(p, ns=(10**9, 10**9))
        os.write(fd, b"y" * 100)
        sm, sb = os.stat(p), os.stat(b)
        assert sm.st_size == sb.st_size == 4196
        assert sm.st_mtime_ns == sb.st_mtime_ns > 10**9  # the write moved mtime, both agree
        os.ftruncate(fd, 10)
        assert os.stat(p).st_size == os.stat(b).st_size == 10
        os.pwrite(fd, b"z", 1 << 20)
        assert os.fstat(fd).st_size == os.stat(b).st_size == (1 << 20) + 1
        os.lseek(fd, 0, os.SEEK_SET)
        assert os.read(fd, 11) == b"x" * 10 + b"\0"
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        os.fsync(fd)
        os.posix_fallocate(fd, 0, 2 << 20)
        assert os.stat(p).st_size == os.stat(b).st_size == 2 << 20
    finally:
        os.close(fd)
    with open(p, "r+b") as f:  # a second handle shares the node's backing file
        with open(p, "rb") as g:
            f.write(b"AB")
            f.flush()
            assert g.read(2) == b"AB"
    os.unlink(p)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_set_id_bits_are_cleared_like_the_kernel_would(custom):
    """A write, O_TRUNC open or truncate by a caller without CAP_FSETID clears set-user-ID
    (and group-executable set-group-ID); a caller with it keeps them (HANDLE_KILLPRIV_V2)."""
    m = custom
    drop = ["setpriv", "--inh-caps=-fsetid", "--bounding-set=-fsetid", sys.executable, "-c"]
    steps = {"write": "fd = os.open(p, os.O_WRONLY); os.write(fd, b'x'); os.close(fd)",
             "otrunc": "os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))",
             "truncate": "os.truncate(p, 0)"}
    for name, code in steps.items():
        b = m.backing(f"w/{name}")
        Path(b).write_bytes(b"#")
        os.chmod(b, 0o6755)
        subprocess.run(drop + ["import os, sys; p = sys.argv[1]; " + code, m.path(f"w/{name}")],
                       check=True)
        assert stat.S_IMODE(os.stat(b).st_mode) == 0o755, name
        os.chmod(b, 0o6755)
        subprocess.run([sys.executable, "-c", "import os, sys; p = sys.argv[1]; " + code,
                        m.path(f"w/{name}")], check=True)
        assert stat.S_IMODE(os.stat(b).st_mode) == 0o6755, name
        os.unlink(m.path(f"w/{name}"))


def test_audited_writes_are_served_by_the_daemon(custom):
    m = custom
    m.audit()
    open_close(m.path("logged/a.txt"), WO | APPEND, data=b"+1")
    ops = [r["op"] for r in m.audit()]
    assert ops == ["open", "write"], ops  # each write is seen (and logged), not passed through
    assert read(m.backing("logged/a.txt")) == b"l+1"


def test_copy_file_range_is_judged_at_both_ends(custom):
    m = custom
    with open(m.path("w/sub/c.txt"), "rb") as src, open(m.path("w/copy.txt"), "wb") as dst:
        assert os.copy_file_range(src.fileno(), dst.fileno(), 10) == 1
    assert read(m.backing("w/copy.txt")) == b"c"
    os.unlink(m.path("w/copy.txt"))


# --- passthrough accounting, with and without passthrough -----------------------------------------

@pytest.mark.parametrize("passthrough", [True, False])
def test_reads_bypass_the_daemon_only_with_passthrough(tmp_path_factory, custom_policy,
                                                       passthrough):
    with mounted(tmp_path_factory, "pt", {"w/big": os.urandom(1 << 20)}, policy=custom_policy,
                 passthrough=passthrough) as m:
        data = read(m.backing("w/big"))
        for _ in range(5):
            assert read(m.path("w/big")) == data
        with open(m.path("w/big"), "r+b") as f:
            f.seek(100)
            f.write(b"hello")
        assert read(m.backing("w/big"))[100:105] == b"hello"
        assert os.stat(m.path("w/big")).st_size == 1 << 20
    summary = m.stderr().splitlines()[-1]
    if passthrough and "passthrough on" not in m.stderr():
        pytest.skip("this kernel has no FUSE passthrough (Linux 6.9+, CONFIG_FUSE_PASSTHROUGH)")
    if passthrough:
        assert "daemon reads 0, writes 0" in summary and "6 passthrough" in summary
        assert "passthrough on" in m.stderr()
    else:
        assert "0 passthrough" in summary and "daemon reads 0" not in summary
        assert "passthrough off (disabled" in m.stderr()


# --- lifecycle ------------------------------------------------------------------------------------

@pytest.fixture
def lone(tmp_path):
    build(tmp_path / "src", {"f.txt": b"f"})
    m = Mount(EXAMPLES / "home.fpol", tmp_path / "src", tmp_path / "mnt", tmp_path / "audit.log")
    yield m
    m.stop()
    if mount_entry(str(m.mnt)) is not None:
        subprocess.run(["umount", "-l", str(m.mnt)])
    assert mount_entry(str(m.mnt)) is None


def test_background_mode_prints_pid_and_umount_ends_it(lone):
    lone.mnt.mkdir()
    with open(lone.err_path, "wb") as err:
        done = subprocess.run(lone.args(foreground=False), stdout=subprocess.PIPE, stderr=err,
                              cwd=str(ROOT), timeout=30)
    assert done.returncode == 0, lone.stderr()
    pid = int(done.stdout.decode().strip())
    assert read(lone.path("f.txt")) == b"f"  # ready when the command returns
    assert subprocess.run(MOUNT_CMD + ["umount", str(lone.mnt)], cwd=str(ROOT)).returncode == 0
    assert wait_gone(pid) and mount_entry(str(lone.mnt)) is None


def test_sigterm_unmounts_and_exits_0(lone):
    lone.start()
    os.kill(lone.proc.pid, signal.SIGTERM)
    assert lone.proc.wait(timeout=10) == 0
    assert mount_entry(str(lone.mnt)) is None
    assert "unmounted" in lone.stderr()


def test_sigterm_while_busy_detaches_and_exits_when_released(lone):
    lone.start()
    f = open(lone.path("f.txt"), "rb")
    os.kill(lone.proc.pid, signal.SIGTERM)
    time.sleep(0.3)
    assert mount_entry(str(lone.mnt)) is None  # detached at once
    assert f.read() == b"f"  # the open file is still served
    f.close()
    assert lone.proc.wait(timeout=10) == 0


def test_external_umount_ends_the_daemon(lone):
    lone.start()
    subprocess.run(["umount", str(lone.mnt)], check=True)
    assert lone.proc.wait(timeout=10) == 0


# A daemon killed (idle or mid-operation), a mount on a live fpol mount, busy unmounts and
# /dev/fuse failures: tests/test_faults.py.


def test_a_policy_that_denies_everything_still_mounts_and_unmounts(tmp_path_factory):
    # Nothing in fpol mount/umount goes through the mount root, so a policy that refuses
    # every request on it (lookup, getattr, opendir, ...) cannot wedge the mount.
    policy = tmp_path_factory.mktemp("all") / "all.fpol"
    policy.write_text('policy nothing\ndeny all matching "/**"\n')
    with mounted(tmp_path_factory, "nothing", {"f": b"f"}, policy=policy) as m:
        denied(m, errno.EACCES, os.stat, str(m.mnt))
        denied(m, errno.EACCES, os.listdir, str(m.mnt))
        denied(m, errno.EACCES, os.open, m.path("f"), RO)
        assert mount_state(str(m.mnt))[0] == "live"


def test_exit_codes(tmp_path, monkeypatch, capsys):
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    bad = tmp_path / "bad.fpol"
    bad.write_text("deny wrte under /x\n")
    assert mount_fn(str(bad), str(src), str(mnt), foreground=True) == 1
    assert "error[FP" in capsys.readouterr().err
    good = str(EXAMPLES / "home.fpol")
    assert mount_fn(good, str(tmp_path / "nope"), str(mnt), foreground=True) == 2
    assert mount_fn(good, str(src), str(tmp_path / "nope"), foreground=True) == 2
    assert mount_fn(good, str(src), str(mnt), foreground=True,
                    handler="no_such_module_xyz:f") == 2
    assert mount_fn(good, str(src), str(mnt), foreground=True,
                    audit=str(tmp_path / "no" / "dir" / "a.log")) == 2
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert mount_fn(good, str(src), str(mnt), foreground=True) == 3
    assert "root" in capsys.readouterr().err
    assert mount_entry(str(mnt)) is None


@pytest.fixture(scope="module")
def custom_owner_only(tmp_path_factory, custom_policy):
    with mounted(tmp_path_factory, "custom_owner", CUSTOM_TREE, policy=custom_policy,
                 extra_args=("--owner-only",)) as m:
        yield m


def test_access_follows_the_read_and_write_groups(custom_owner_only):
    # Without default_permissions the kernel asks the daemon (FUSE_ACCESS), which decides
    # access(2) by the policy.
    m = custom_owner_only
    assert os.access(m.path("w/sub/c.txt"), os.R_OK | os.W_OK)
    assert not os.access(m.path("w/b.key"), os.R_OK)  # access with MAY_READ is `read`
    assert os.access(m.path("w/b.key"), os.W_OK)
    assert not os.access(m.path("ro/a.txt"), os.W_OK)
    assert os.access(m.path("ro/a.txt"), os.F_OK)


def test_access_on_a_shared_mount_reports_unix_permissions(custom):
    # With default_permissions (every user) the kernel answers access(2) from the mode
    # bits alone and never asks the daemon; the policy applies when the object is used.
    m = custom
    assert os.access(m.path("w/b.key"), os.R_OK)
    denied(m, errno.EACCES, os.open, m.path("w/b.key"), RO)


# --- differential: the mount against the reference evaluator -----------------------------

from hypothesis import HealthCheck, given, strategies as st  # noqa: E402

from fpol.compiler.driver import check  # noqa: E402
from fpol.compiler.evaluate import Evaluator, Request  # noqa: E402
from fpol.runtime.fuse.enforce import errno_number  # noqa: E402

from strategies import searching  # noqa: E402

FOLDED = """\
policy folded
names case-insensitive
deny write under /ro with EROFS
redirect open to userspace before under /w
deny read named "*.key"
deny delete at /keep/a.txt with EPERM
deny lookup named "hidden*" with EACCES
"""
FOLDED_TREE = {"w/a.txt": b"a", "w/B.KEY": b"k", "w/Hidden/f": b"f", "RO/x.txt": b"x",
               "ro/y.txt": b"y", "keep/A.TXT": b"A", "keep/a.txt": b"a"}
# Globs beside literals they also match, and moves "no gain by moving" judges by them
# (docs/fuzzing.md finding 5): renaming /a to /b would make /b/y/secret readable.
GLOBS = """\
policy globs
deny read matching "/a/?/secret" except under /a/x
deny write matching "/d/*.log" with EROFS
deny lookup named "h?" with ENOENT
deny create matching "/*/??" with EPERM
audit read under /d named "k*"
"""
GLOBS_TREE = {"a/x/secret": b"s", "a/y/secret": b"t", "a/xx/secret": b"u", "d/a.log": b"l",
              "d/k1": b"k", "d/hx/f": b"h", "b": None}
# policy text, initial tree, top-level names, other names: what the steps are made of
DIFF_CASES = {
    "custom": (CUSTOM, CUSTOM_TREE, ["w", "ro", "nocreate", "keep", "logged"],
               ["a.txt", "b.key", "sub", "new", "hidden", "new.key"]),
    "folded": (FOLDED, FOLDED_TREE, ["w", "ro", "RO", "keep"],
               ["a.txt", "A.TXT", "b.key", "B.KEY", "Hidden", "new"]),
    "globs": (GLOBS, GLOBS_TREE, ["a", "b", "d"],
              ["x", "y", "xx", "secret", "a.log", "k1", "hx", "new"]),
}
# Errors the VFS returns before the filesystem is asked (so before any policy decision).
PRECHECK = {errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.EPERM,
            errno.ENOTEMPTY}
FOLLOWS = {"open_r", "open_w", "open_rw", "open_trunc", "append", "truncate", "chmod", "utime",
           "setxattr", "listdir", "stat", "creat"}
OPEN_FLAGS = {"open_r": RO, "open_w": WO, "open_rw": RW, "open_trunc": RO | TRUNC,
              "append": WO | APPEND, "create": WO | CREAT | EXCL, "create_rw": RW | CREAT | EXCL,
              "creat": WO | CREAT}
CREATES = {"create", "create_rw", "creat", "mkdir", "mknod", "symlink"}
ONE_PATH = sorted(OPEN_FLAGS) + ["truncate", "chmod", "utime", "setxattr", "mkdir", "mknod",
                                 "symlink", "unlink", "rmdir", "listdir", "stat", "readlink"]


def steps_for(tops, names):
    # mostly one level below the top directories, where the tree's names exist
    rest = st.one_of(st.lists(st.sampled_from(names), min_size=1, max_size=1),
                     st.lists(st.sampled_from(names), max_size=2))
    paths = st.builds(lambda top, more: (top,) + tuple(more), st.sampled_from(tops), rest)
    return st.one_of(st.tuples(st.sampled_from(ONE_PATH), paths, st.none()),
                     st.tuples(st.sampled_from(["rename", "link"]), paths, paths))


def do(root: str, step) -> int:
    """Run one step under root; 0 or the errno."""
    op, path, to = step
    p = os.path.join(root, *path)
    q = os.path.join(root, *to) if to else None

    def act():
        if op in OPEN_FLAGS:
            fd = os.open(p, OPEN_FLAGS[op] | os.O_NONBLOCK, 0o644)
            try:
                if op == "append":
                    os.write(fd, b"+")
            finally:
                os.close(fd)
        elif op == "truncate":
            os.truncate(p, 1)
        elif op == "chmod":
            os.chmod(p, 0o640)
        elif op == "utime":
            os.utime(p, (1000, 2000))
        elif op == "setxattr":
            os.setxattr(p, "user.t", b"v")
        elif op == "mkdir":
            os.mkdir(p, 0o755)
        elif op == "mknod":
            os.mknod(p, stat.S_IFIFO | 0o644)
        elif op == "symlink":
            os.symlink("nowhere", p)
        elif op == "unlink":
            os.unlink(p)
        elif op == "rmdir":
            os.rmdir(p)
        elif op == "rename":
            os.rename(p, q)
        elif op == "link":
            os.link(p, q, follow_symlinks=False)
        elif op == "listdir":
            os.listdir(p)
        elif op == "stat":
            os.stat(p)
        elif op == "readlink":
            os.readlink(p)
    return errno_of(act)


class Model:
    """What the mount must answer: the policy's decisions on the requests the kernel sends
    (a lookup per path component, then the op), over the state of a shadow directory."""

    def __init__(self, policy, shadow: str):
        self.ev = Evaluator(policy)
        self.shadow = shadow

    def lstat(self, comps):
        try:
            return os.lstat(os.path.join(os.fsencode(self.shadow), *comps))
        except OSError:
            return None

    def denial(self, request: Request):
        d = self.ev.evaluate(request).decision
        return errno_number(d.errno) if d.kind == "deny" else None

    def walk(self, comps, lookups: list) -> bool:
        """The walk of directories `comps`: each is looked up (judged); False if it stops."""
        for i in range(1, len(comps) + 1):
            lookups.append(comps[:i])
            s = self.lstat(comps[:i])
            if s is None:
                return False
            if stat.S_ISLNK(s.st_mode):  # our symlinks all dangle
                lookups.append(comps[:i - 1] + (b"nowhere",))
                return False
            if not stat.S_ISDIR(s.st_mode):
                return False
        return True

    def last(self, comps, follow: bool, lookups: list) -> bool:
        s = self.lstat(comps)
        if s is not None and stat.S_ISLNK(s.st_mode) and follow:
            lookups.append(comps)
            lookups.append(comps[:-1] + (b"nowhere",))
            return False
        return True

    def visible(self, comps, creates: bool):
        """The kernel's lookup of a last component: (errno, exists-as-the-kernel-sees-it).

        A lookup denied with ENOENT is a negative dentry, not an error: an op that
        creates the name goes ahead (and is judged as itself); any other op gets ENOENT."""
        err = self.denial(Request("lookup", comps))
        if err == errno.ENOENT:
            return (None, False) if creates else (errno.ENOENT, False)
        return err, self.lstat(comps) is not None

    def expect(self, step):
        """(errno the policy refuses with, or None) — or "skip" for steps it cannot model."""
        op, path, to = step
        path = tuple(c.encode() for c in path)
        to = tuple(c.encode() for c in to) if to else None
        target = self.lstat(path)
        if op in ("rename", "link") and path == to:
            return "skip"  # rename(a, a) succeeds in the VFS without asking anyone
        if target is not None and stat.S_ISLNK(target.st_mode) and op == "creat":
            return "skip"  # O_CREAT through a dangling symlink creates its target
        if target is not None and stat.S_ISFIFO(target.st_mode) and op in OPEN_FLAGS:
            return "skip"  # the kernel opens fifos itself, without FUSE_OPEN (no policy)
        # The lookups the kernel sends, in its order (namei: parents first, then last
        # components; linkat resolves its source completely first).
        lookups: list = []
        finals = []  # (path, creates): last components looked up after the walks
        if op == "rename":
            ok = self.walk(path[:-1], lookups) and self.walk(to[:-1], lookups)
            finals = [(path, False), (to, True)]
        elif op == "link":
            ok = self.walk(path[:-1], lookups)
            if ok:
                lookups.append(path)
                ok = self.walk(to[:-1], lookups)
            finals = [(to, True)]
        else:
            ok = self.walk(path[:-1], lookups) and self.last(path, op in FOLLOWS, lookups)
            finals = [(path, op in CREATES)]
        for comps in lookups:
            err = self.denial(Request("lookup", comps))
            if err:
                return err
        if not ok:
            return None  # the walk fails the same way on the shadow
        hidden_target = False
        for comps, creates in finals:
            err, exists = self.visible(comps, creates)
            if err:
                return err
            if creates and not exists and self.lstat(comps) is not None:
                hidden_target = True
            if comps == path and op not in ("rename", "link"):
                target = target if exists else None
        for request in self.requests(op, path, to, target):
            err = self.denial(request)
            if err:
                return err
        if hidden_target:
            return errno.EEXIST  # the daemon never creates over (or replaces) a hidden name
        return None

    def hide(self, root: str) -> None:
        """Remove what lookups hide (denied with ENOENT): the kernel's view of the tree."""
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                comps = tuple(os.fsencode(c) for c in os.path.relpath(p, root).split(os.sep))
                if self.denial(Request("lookup", comps)) == errno.ENOENT:
                    if name in dirnames:
                        shutil.rmtree(p)
                        dirnames.remove(name)
                    else:
                        os.unlink(p)

    @staticmethod
    def requests(op, path, to, target):
        is_dir = target is not None and stat.S_ISDIR(target.st_mode)
        if op in OPEN_FLAGS:
            flags = OPEN_FLAGS[op]
            if flags & CREAT and (target is None or flags & EXCL):
                return [Request("create", path, flags=flags)]
            if is_dir and op == "open_r":
                return [Request("opendir", path)]
            out = [Request("open", path, flags=flags & ~CREAT)]
            return out + ([Request("write", path)] if op == "append" else [])
        return {
            "truncate": [Request("setattr", path)], "chmod": [Request("setattr", path)],
            "utime": [Request("setattr", path)], "setxattr": [Request("setxattr", path)],
            "mkdir": [Request("mkdir", path)], "mknod": [Request("mknod", path)],
            "symlink": [Request("symlink", path)], "unlink": [Request("unlink", path)],
            "rmdir": [Request("rmdir", path)], "rename": [Request("rename", path, to)],
            "link": [Request("link", path, to)],
            "listdir": [Request("opendir", path), Request("readdir", path)],
            "stat": [Request("getattr", path)], "readlink": [Request("readlink", path)],
        }[op]


def comparable(root) -> dict:
    """A snapshot without times: the mount and the shadow ran at different moments."""
    return {k: v[:5] + v[6:] for k, v in snapshot(root).items()}


def reset(root: str, tree: dict) -> None:
    for name in os.listdir(root):
        p = os.path.join(root, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)
    build(Path(root), tree)


@pytest.fixture(scope="module", params=sorted(DIFF_CASES))
def diffmount(request, tmp_path_factory):
    text, tree, tops, names = DIFF_CASES[request.param]
    policy_path = tmp_path_factory.mktemp("policy") / f"{request.param}.fpol"
    policy_path.write_text(text)
    # Every example resets the backing tree behind the mount's back, which a caching mount
    # shows only after its timeout: this test runs uncached (the attack corpus and the
    # multi-user tests run with the kernel's cache on).
    with mounted(tmp_path_factory, "diff", tree, policy=policy_path,
                 extra_args=("--cache", "off")) as m:
        shadow = tmp_path_factory.mktemp("shadow")
        os.chmod(shadow, stat.S_IMODE(os.stat(m.source).st_mode))
        policy = check(text, str(policy_path)).require().policy
        yield m, str(shadow), policy, tree, steps_for(tops, names)


@searching(120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_differential_against_the_evaluator(diffmount, data):
    m, shadow, policy, tree, step_strategy = diffmount
    steps = data.draw(st.lists(step_strategy, min_size=1, max_size=10), label="steps")
    reset(str(m.source), tree)
    reset(shadow, tree)
    model = Model(policy, shadow)
    for step in steps:
        expected = model.expect(step)
        if expected == "skip":
            continue
        got = do(str(m.mnt), step)
        if expected is None:
            assert got == do(shadow, step), f"{step}: mount and plain directory disagree"
        elif got != expected:
            scratch = shadow + ".scratch"
            shutil.rmtree(scratch, ignore_errors=True)
            subprocess.run(["cp", "-a", shadow, scratch], check=True)  # fifos too
            model.hide(scratch)  # the VFS checks against what it sees
            try:
                assert got in PRECHECK and got == do(scratch, step), \
                    f"{step}: expected {errno.errorcode[expected]}, got " \
                    f"{errno.errorcode.get(got, 'success')}"
            finally:
                shutil.rmtree(scratch)
    assert comparable(str(m.source)) == comparable(shadow)


def test_several_reader_threads_enforce_the_same_and_unmount_cleanly(tmp_path):
    # `--threads 3`: requests read from cloned descriptors, replies on the one each came from.
    policy = tmp_path / "p.fpol"
    policy.write_text("policy threads\ndeny write under /ro with EROFS\n")
    build(tmp_path / "src", {"ro/a.txt": b"alpha", "rw/b.txt": b"beta"})
    m = Mount(policy, tmp_path / "src", tmp_path / "mnt", tmp_path / "audit.log",
              extra_args=("--threads", "3", "--cache", "off")).start()
    try:
        import concurrent.futures as cf

        def work(i: int):
            assert read(m.path("ro/a.txt")) == b"alpha"
            assert errno_of(open_close, m.path("ro/a.txt"), WO) == errno.EROFS
            open_close(m.path(f"rw/new{i}"), WO | CREAT | EXCL, data=b"x")
            return os.stat(m.path(f"rw/new{i}")).st_size
        with cf.ThreadPoolExecutor(6) as pool:
            assert list(pool.map(work, range(60))) == [1] * 60
    finally:
        assert m.stop() == 0, m.stderr()
    assert sorted(p.name for p in (tmp_path / "src" / "rw").iterdir()) == \
        sorted(["b.txt"] + [f"new{i}" for i in range(60)])
    assert (tmp_path / "src" / "ro" / "a.txt").read_bytes() == b"alpha"
