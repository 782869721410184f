"""Faults (issue 7): what fpol does when things go wrong part-way, one section per fault.

1. A load that fails half-way leaves nothing attached or pinned.
2. A name collision is refused cleanly, the existing policy untouched.
3. An unmount while files are open on the mount.
4. The daemon killed mid-operation.
5. /dev/fuse errors, and mount(2) failing.
6. A policy file that changes during a compile; atomic outputs and object cache.

Every failure must say what went wrong, where, and what to do (one line, never a Python
traceback) and leave nothing half-done. Kernel sections need root with BPF, mount
sections root with /dev/fuse; both skip naming what is missing (CI has them).
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusemount import ROOT, Mount, errno_of, missing, mount_state, wait_gone
from kernel_support import pin_root, registered_cc, require_bpf, tcp_cc_object  # noqa: F401
from fpol.runtime.mount import mount as mount_fn, mount_entry

FPOL = [sys.executable, "-m", "fpol"]
INSTANCES = ["fpoltest_1", "fpoltest_2"]  # tests/data/tcp_cc.bpf.c
_NO_FUSE = missing()
needs_fuse = pytest.mark.skipif(_NO_FUSE is not None, reason=f"real FUSE mounts: {_NO_FUSE}")


def one_clear_line(text: str) -> str:
    """The command's error: exactly one line, no traceback."""
    assert "Traceback" not in text, text
    lines = [l for l in text.splitlines() if l.strip()]
    assert len(lines) == 1, text
    return lines[0]


def wait_until(cond, what: str, timeout: float = 20.0) -> None:
    """Poll for a state the kernel reaches asynchronously (a liveness bound, not a timing
    assertion: the deadline is far above what it takes)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.02)


# --- 1. a load that fails half-way ---------------------------------------------------------

def struct_ops_maps() -> set[str]:
    """Names of the struct_ops maps the kernel holds (bpftool), registered or not."""
    out = subprocess.run(["bpftool", "-j", "map", "list"], capture_output=True, text=True,
                         check=True)
    return {m.get("name", "") for m in json.loads(out.stdout or "[]")
            if m.get("type") == "struct_ops"}


def bpffs_tree(root: str) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        found.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return found


def assert_nothing_left(pin_root: str, before: set[str]) -> None:
    assert not set(INSTANCES) & registered_cc(), "an instance is still registered"
    assert not os.path.exists(os.path.join(pin_root, "fpoltest")), "the pin directory is left"
    assert bpffs_tree(pin_root) == before, "something is left pinned"
    # The maps themselves go once their last reference is dropped (freed after an RCU
    # grace period, so polled): nothing may keep one alive.
    wait_until(lambda: not {n for n in struct_ops_maps() if n.startswith("fpoltest_")},
               "the fpoltest struct_ops maps to be freed")


class Injected(Exception):
    pass


@pytest.fixture
def bpf():
    require_bpf()  # and bpftool, which scripts/install-deps installs
    yield
    # Even when a test (or the loader) failed, leave no test instance registered.
    for name in set(INSTANCES) & registered_cc():
        subprocess.run(["bpftool", "struct_ops", "unregister", "name", name],
                       capture_output=True)


@pytest.mark.parametrize("what", ["attach", "pin"])
@pytest.mark.parametrize("k", [0, 1])
@pytest.mark.parametrize("exc", [Injected, KeyboardInterrupt], ids=["error", "interrupt"])
def test_load_failing_after_k_of_n_steps_leaves_nothing(bpf, tcp_cc_object, pin_root, what, k,
                                                        exc):
    """Fail the (k+1)-th attach or pin of two, by an error or an interrupt: every instance
    attached is detached, every pin removed, the pin directory gone, no map kept."""
    from fpol.runtime import loader

    os.makedirs(pin_root, exist_ok=True)
    before = bpffs_tree(pin_root)
    seen = []

    def step(kind, name):
        if kind == what:
            if len(seen) == k:
                # By now k instances are attached (and, at a pin step, all are attached
                # and k pinned): the failure really is half-way.
                if what == "attach":
                    assert len(set(INSTANCES[:k]) & registered_cc()) == k
                else:
                    assert set(INSTANCES) <= registered_cc()
                    assert len(os.listdir(os.path.join(pin_root, "fpoltest"))) == k
                raise exc(f"injected at {kind} {name}")
            seen.append(name)

    with pytest.raises(exc, match="injected"):
        loader.load(tcp_cc_object, "fpoltest", "tcp_congestion_ops", pin_root, step=step)
    assert seen == INSTANCES[:k]
    assert_nothing_left(pin_root, before)
    # ... and the same load works afterwards.
    loaded = loader.load(tcp_cc_object, "fpoltest", "tcp_congestion_ops", pin_root)
    assert set(loaded.instances) <= registered_cc()
    loader.unload("fpoltest", pin_root)


def test_load_of_a_broken_object_leaves_nothing_and_says_so(bpf, tmp_path, pin_root, capsys,
                                                            monkeypatch):
    from fpol import cli
    from fpol.runtime import loader

    bad = tmp_path / "broken.bpf.o"
    bad.write_bytes(b"\x7fELF" + b"\0" * 60)
    use_tcp_cc(monkeypatch, pin_root)
    assert cli.main(["load", str(bad)]) == 2
    line = one_clear_line(capsys.readouterr().err)
    assert str(bad) in line and "fpol compile" in line
    assert loader.status(pin_root) == []


# --- 2. name collisions ---------------------------------------------------------------------

def use_tcp_cc(monkeypatch, pin_root: str) -> None:
    """Point `fpol load` at tcp_congestion_ops and a private pin root (this kernel has no
    struct fuse_ops): the command's own paths, on real kernel objects."""
    from fpol.runtime import loader

    real_load = loader.load
    monkeypatch.setattr(loader, "preflight", lambda struct_name: None)
    monkeypatch.setattr(loader, "load", lambda obj, name, *rest, **kw: real_load(
        obj, name, "tcp_congestion_ops", pin_root))


def test_loading_a_loaded_name_is_refused_and_the_loaded_one_kept(bpf, tcp_cc_object, pin_root,
                                                                  capsys, monkeypatch):
    from fpol import cli
    from fpol.runtime import loader

    first = loader.load(tcp_cc_object, "fpoltest", "tcp_congestion_ops", pin_root)
    pins = bpffs_tree(pin_root)
    use_tcp_cc(monkeypatch, pin_root)
    assert cli.main(["load", tcp_cc_object]) == 1
    line = one_clear_line(capsys.readouterr().err)
    assert "`fpoltest` is already loaded" in line and "fpol unload fpoltest" in line
    # Untouched: still registered, the same pins.
    assert set(first.instances) <= registered_cc()
    assert bpffs_tree(pin_root) == pins


def test_an_instance_name_taken_by_another_program_is_refused(bpf, tcp_cc_object, pin_root,
                                                              capsys, monkeypatch):
    """The second instance's name is registered by someone else (not an fpol pin): the load
    is refused naming it, the first instance is detached again, the other one untouched."""
    from fpol import cli
    from fpol.runtime import libbpf

    os.makedirs(pin_root, exist_ok=True)
    before = bpffs_tree(pin_root)
    use_tcp_cc(monkeypatch, pin_root)
    with libbpf.BpfObject(tcp_cc_object) as obj:
        obj.load()
        taken = obj.map("fpoltest_2").attach_struct_ops()
        try:
            assert cli.main(["load", tcp_cc_object]) == 1
            line = one_clear_line(capsys.readouterr().err)
            assert "`fpoltest_2` is already registered" in line and "nothing was loaded" in line
            assert "fpoltest_1" not in registered_cc()  # rolled back
            assert "fpoltest_2" in registered_cc()  # the other program's, untouched
            assert not os.path.exists(os.path.join(pin_root, "fpoltest"))
            assert bpffs_tree(pin_root) == before
        finally:
            taken.destroy()
    assert_nothing_left(pin_root, before)


def test_two_loads_racing_for_a_name_leave_the_winner_alone(bpf, tcp_cc_object, pin_root):
    """Another `fpol load` of the same name creates the pin directory while this one is
    attaching: this one is refused and removes nothing of the other's."""
    from fpol.runtime import loader

    winner = os.path.join(pin_root, "fpoltest")

    def step(kind, name):
        if kind == "attach" and name == INSTANCES[-1]:
            os.makedirs(winner)  # the other load got there first
            os.mkdir(os.path.join(winner, "marker"))  # stands for its pins (bpffs has no files)

    try:
        with pytest.raises(loader.LoadRefused, match="already loaded"):
            loader.load(tcp_cc_object, "fpoltest", "tcp_congestion_ops", pin_root, step=step)
        assert sorted(os.listdir(winner)) == ["marker"]
        assert not set(INSTANCES) & registered_cc()
    finally:
        shutil.rmtree(winner, ignore_errors=True)


# --- mounts: helpers ------------------------------------------------------------------------

POLICY = """policy faulty
deny write under /ro with EROFS
redirect rename, create, write to userspace under /hold
audit rename, create under /after
"""

# A handler that holds a request under /hold: it says so (a marker file) and never returns,
# so the daemon can be killed with the request in flight, before the op is performed. It
# holds renames and creates, and under /hold/data the 33rd write (after 4 MiB of 128 KiB).
HOLD_HANDLER = """
import os, time

writes = 0

def hold(event):
    global writes
    path, op = event["path"], event["op"]
    if not path.startswith("/hold/"):
        return None
    if path.startswith("/hold/data/"):
        if op != "write":
            return None
        writes += 1
        if writes <= 32:
            return None
    elif op not in ("rename", "create"):
        return None
    with open({marker!r}, "w") as f:
        f.write(op)
    time.sleep(3600)
"""


class Mounts:
    """Mounts a test makes; every one is unmounted (lazily if busy) and its daemon reaped
    at the end, even when the test failed."""

    def __init__(self, base: Path):
        self.base = base
        self.made: list[Mount] = []
        self.policy = base / "faulty.fpol"
        self.policy.write_text(POLICY)
        self.src = base / "src"
        for d in ("ro", "hold", "hold/data", "after", "w", "dir"):
            (self.src / d).mkdir(parents=True, exist_ok=True)
        (self.src / "r.txt").write_bytes(b"read me")
        (self.src / "w.txt").write_bytes(b"")
        (self.src / "ro" / "keep").write_bytes(b"keep")
        (self.src / "m.bin").write_bytes(b"M" * 8192)
        self.mnt = base / "mnt"
        (base / "hold.py").write_text(HOLD_HANDLER.format(marker=str(base / "held")))

    def start(self, audit: Path = None, passthrough: bool = True, handler: bool = False,
              mnt: Path = None) -> Mount:
        m = Mount(self.policy, self.src, mnt or self.mnt, audit or self.base / "audit.log",
                  handler=f"{self.base / 'hold.py'}:hold" if handler else None,
                  passthrough=passthrough)
        self.made.append(m)
        return m.start()

    def close(self) -> None:
        for m in self.made:
            m.stop()
            if m.proc is not None and m.proc.poll() is None:
                m.proc.kill()
                m.proc.wait()
        for m in self.made:
            while mount_entry(str(m.mnt)) is not None:
                subprocess.run(["umount", "-l", str(m.mnt)], check=True)


@pytest.fixture
def mounts(tmp_path):
    if _NO_FUSE is not None:
        pytest.skip(f"real FUSE mounts: {_NO_FUSE}")
    ms = Mounts(tmp_path)
    yield ms
    ms.close()


def fpol(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(FPOL + list(args), cwd=str(ROOT), capture_output=True, text=True,
                          timeout=timeout)


def names(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def daemon_pids_for(path: Path) -> list[int]:
    """Processes whose command line names `path` (an fpol mount daemon for it)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if os.fsencode(str(path)) in args and b"mount" in args:
            pids.append(int(name))
    return pids


# --- 3. unmount while files are open -------------------------------------------------------

@needs_fuse
def test_umount_of_a_busy_mount_refuses_naming_the_users_then_lazy_detaches(mounts):
    m = mounts.start()
    rfd = os.open(m.path("r.txt"), os.O_RDONLY)
    wfd = os.open(m.path("w.txt"), os.O_WRONLY)
    mfd = os.open(m.path("m.bin"), os.O_RDONLY)
    mapped = mmap.mmap(mfd, 8192, prot=mmap.PROT_READ)
    os.close(mfd)  # only the mapping holds it now
    sitter = subprocess.Popen(["sleep", "3600"], cwd=m.path("dir"))
    try:
        before = dict((p, (m.source / p).read_bytes()) for p in ("r.txt", "ro/keep", "m.bin"))

        # Refused: exit 1, one line naming who uses it and the way out.
        done = fpol("umount", str(m.mnt))
        assert done.returncode == 1
        line = one_clear_line(done.stderr)
        assert "is busy, not unmounted" in line and f"fpol umount --lazy {m.mnt}" in line
        assert f"pid {os.getpid()} " in line and f"pid {sitter.pid} (sleep: working directory" in line
        assert "open file " + m.path("r.txt") in line
        assert mount_state(str(m.mnt))[0] == "live" and m.proc.poll() is None
        assert os.pread(rfd, 100, 0) == b"read me"  # nothing was disturbed

        # --lazy: detached at once; the open files keep working, the daemon keeps serving.
        done = fpol("umount", "--lazy", str(m.mnt))
        assert done.returncode == 0, done.stderr
        assert "detached while in use" in one_clear_line(done.stderr)
        assert mount_entry(str(m.mnt)) is None
        assert os.pread(rfd, 100, 0) == b"read me"
        assert os.write(wfd, b"written after the detach") == 24
        assert mapped[:4] == b"MMMM"
        assert os.listdir(f"/proc/{sitter.pid}/cwd") == []  # the cwd is still served
        assert m.proc.poll() is None

        # The mountpoint is free again: a new mount there works beside the detached one.
        again = mounts.start(audit=mounts.base / "audit2.log")
        assert Path(again.path("r.txt")).read_bytes() == b"read me"
        assert again.stop() == 0
    finally:
        os.close(rfd)
        os.close(wfd)
        mapped.close()
        sitter.kill()
        sitter.wait()
    # The last user gone, the detached daemon exits by itself, cleanly.
    assert m.proc.wait(timeout=20) == 0
    assert "unmounted" in m.stderr()
    # The backing directory is intact, with the write made through the open descriptor.
    assert (m.source / "w.txt").read_bytes() == b"written after the detach"
    assert all((m.source / p).read_bytes() == data for p, data in before.items())
    assert not names(m.source) - {"r.txt", "w.txt", "m.bin", "ro", "ro/keep", "hold",
                                  "hold/data", "after", "w", "dir"}


@needs_fuse
def test_a_second_signal_to_a_detached_daemon_ends_its_open_files_cleanly(mounts):
    """SIGTERM while busy detaches (test_mount.py); a second SIGTERM stops the daemon: the
    files still open fail with ENOTCONN instead of hanging, and the daemon exits 0."""
    m = mounts.start(passthrough=False)  # the daemon serves the reads, so they must fail
    fd = os.open(m.path("r.txt"), os.O_RDONLY)
    try:
        os.kill(m.proc.pid, signal.SIGTERM)
        wait_until(lambda: mount_entry(str(m.mnt)) is None, "the detach")
        assert os.pread(fd, 100, 0) == b"read me"
        os.kill(m.proc.pid, signal.SIGTERM)
        assert m.proc.wait(timeout=20) == 0
        assert errno_of(os.pread, fd, 100, 0) == errno.ENOTCONN
        assert "stopped by a signal" in m.stderr()
    finally:
        # close(2) releases the descriptor even when its flush fails (ENOTCONN here).
        errno_of(os.close, fd)
    assert (m.source / "r.txt").read_bytes() == b"read me"


@needs_fuse
def test_umount_of_an_idle_mount_needs_no_lazy(mounts):
    m = mounts.start()
    done = fpol("umount", str(m.mnt))
    assert done.returncode == 0 and done.stderr == ""
    assert m.proc.wait(timeout=20) == 0 and mount_entry(str(m.mnt)) is None


# --- 4. the daemon killed mid-operation ---------------------------------------------------

WRITER = """
import os, struct, sys
path, total, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
done = i = 0
try:
    while done < total:
        done += os.write(fd, struct.pack("<Q", i) * (chunk // 8))
        i += 1
        print(done, flush=True)
except OSError as e:
    print("error", e.errno, flush=True)
try:
    os.close(fd)
except OSError as e:
    print("close", e.errno, flush=True)
"""
CHUNK, TOTAL = 128 << 10, 64 << 20


def chunk_of(i: int) -> bytes:
    return struct.pack("<Q", i) * (CHUNK // 8)


def assert_written_prefix(path: Path, acked: int) -> None:
    """The file holds what the writer was told was written, at most one more write, and
    nothing but the writer's data (in order)."""
    size = path.stat().st_size
    assert acked <= size <= acked + CHUNK, (acked, size)
    with open(path, "rb") as f:
        i = 0
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            assert data == chunk_of(i)[:len(data)], f"chunk {i} is not the writer's data"
            i += 1


def assert_reported_dead_and_recover(mounts: Mounts, m: Mount, via_umount: bool) -> Mount:
    """After a daemon died: `fpol status` reports the mount dead and says what to do; the
    dead mount is removed by `fpol umount`, or cleared by the next `fpol mount` by itself;
    either way the next mount works."""
    assert mount_state(str(m.mnt))[0] == "dead"
    status = fpol("status")
    assert status.returncode == 0
    line = next(l for l in status.stdout.splitlines() if l.startswith(f"mount {m.mnt}: "))
    assert line.startswith(f"mount {m.mnt}: {m.source}, ") and ", DEAD" in line
    assert f"`fpol umount {m.mnt}` removes it" in status.stdout
    if via_umount:
        done = fpol("umount", str(m.mnt))
        assert done.returncode == 0
        assert "removed the dead mount" in one_clear_line(done.stderr)
        assert mount_entry(str(m.mnt)) is None
    again = mounts.start(audit=mounts.base / "audit-again.log")
    if not via_umount:
        assert "cleared a dead mount" in again.stderr()
    assert Path(again.path("r.txt")).read_bytes() == b"read me"
    return again


@needs_fuse
@pytest.mark.parametrize("passthrough", [True, False], ids=["passthrough", "no-passthrough"])
def test_daemon_killed_during_a_big_write(mounts, passthrough):
    """Passthrough: the kernel writes to the backing file itself, so the daemon is killed
    while the writer is writing (and the writes may go on after it died). Without: the
    daemon is killed holding a write request (the handler holds the 33rd), so exactly the
    acknowledged writes have reached the file. Either way the file is exactly the writer's
    data, and nothing else appears in the backing directory."""
    m = mounts.start(passthrough=passthrough, handler=not passthrough)
    rel = "w/big" if passthrough else "hold/data/big"
    before = names(m.source)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, m.path(rel), str(TOTAL),
                               str(CHUNK)], stdout=subprocess.PIPE, text=True)
    try:
        if passthrough:
            acked = 0
            for line in writer.stdout:  # kill once the write is well under way
                acked = int(line)
                if acked >= 4 << 20:
                    break
        else:
            wait_until((mounts.base / "held").exists, "the handler to hold a write")
            assert writer.poll() is None  # the write is in flight
        m.kill9()
        # Not communicate(): with a timeout it reads the pipe's descriptor directly and
        # loses the lines the loop above had already buffered. The writer's output is a
        # few KiB, well within the pipe.
        writer.wait(timeout=60)
        rest = writer.stdout.read().split()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    numbers = [int(w) for w in rest if w.isdigit() and int(w) > 1000]
    acked = max([acked if passthrough else 0] + numbers)
    big = m.source / rel
    if not passthrough:
        assert acked == 32 * CHUNK and big.stat().st_size == acked
        # The request in flight fails with ECONNABORTED (the kernel's abort). The close
        # after it succeeds: every write was answered (or failed) before it, and the open
        # asked for no FLUSH (FOPEN_NOFLUSH), so close has nothing left to report.
        assert rest[-2:] == ["error", str(errno.ECONNABORTED)] and "close" not in rest
    assert_written_prefix(big, acked)
    assert names(m.source) - before == {rel}  # no temporary or partial files of fpol's
    again = assert_reported_dead_and_recover(mounts, m, via_umount=passthrough)
    assert os.stat(again.path(rel)).st_size == big.stat().st_size


OP_CHILD = """
import os, sys
op, a, b = sys.argv[1:4]
try:
    if op == "rename":
        os.rename(a, b)
    else:
        os.close(os.open(a, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    print(0)
except OSError as e:
    print(e.errno)
"""


def full_fifo(path: Path) -> tuple[int, int]:
    """A FIFO whose pipe is full: whoever writes to it next blocks (until it is read)."""
    import fcntl

    os.mkfifo(path)
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    try:
        while True:
            os.write(w, b"#" * 512)
    except BlockingIOError:
        pass
    return r, w


@needs_fuse
@pytest.mark.parametrize("op", ["rename", "create"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_daemon_killed_with_a_namespace_op_in_flight(mounts, op, when):
    """Killed while a rename or create is in flight: held by the handler before the op
    (`before`), or after the op is done on the backing directory but before the reply,
    held by a blocked audit log write (`after`). The backing directory is in one state or
    the other, never in between: a rename is atomic, a create leaves a whole new file or
    none, and fpol leaves nothing of its own."""
    d = "hold" if when == "before" else "after"
    (mounts.src / d / "a").write_bytes(b"payload")
    fifo = None
    if when == "after":
        fifo = full_fifo(mounts.base / "audit.fifo")
        m = mounts.start(audit=mounts.base / "audit.fifo")
    else:
        m = mounts.start(handler=True)
    try:
        before = names(m.source)
        src = m.path(f"{d}/a") if op == "rename" else m.path(f"{d}/new")
        child = subprocess.Popen([sys.executable, "-c", OP_CHILD, op, src, m.path(f"{d}/b")],
                                 stdout=subprocess.PIPE, text=True)
        if when == "before":
            held = mounts.base / "held"
            wait_until(held.exists, "the handler to hold the request")
            assert held.read_text() == op
        else:
            done = (m.source / d / ("b" if op == "rename" else "new"))
            wait_until(done.exists, "the op to reach the backing directory")
        assert child.poll() is None  # the caller is still waiting for the reply: mid-operation
        m.kill9()
        # The kernel fails a request in flight with ECONNABORTED, later ones with ENOTCONN.
        assert child.communicate(timeout=60)[0].strip() in (str(errno.ECONNABORTED),
                                                           str(errno.ENOTCONN))
    finally:
        if fifo:
            for fd in fifo:
                os.close(fd)
    after = names(m.source)
    if op == "rename":
        moved = {f"{d}/b"} if when == "after" else {f"{d}/a"}
        assert after == before - {f"{d}/a"} | moved
        assert (m.source / moved.pop()).read_bytes() == b"payload"
    else:
        assert after == (before | {f"{d}/new"} if when == "after" else before)
        if when == "after":
            assert (m.source / d / "new").stat().st_size == 0
    assert_reported_dead_and_recover(mounts, m, via_umount=(op == "rename"))


def fpol_mount_bg(mounts: Mounts, *extra: str) -> subprocess.CompletedProcess:
    """`fpol mount` in the background, its stderr through a file (the daemon itself
    logs to its own file and keeps none of the caller's descriptors)."""
    err_path = mounts.base / "bg.stderr"
    with open(err_path, "w") as err:
        done = subprocess.run(FPOL + ["mount", str(mounts.policy), str(mounts.src),
                                      str(mounts.mnt), "--audit", str(mounts.base / "bg.log"),
                                      "--log", str(mounts.base / "daemon.log"),
                                      *extra], cwd=str(ROOT), stdout=subprocess.PIPE,
                              stderr=err, text=True, timeout=60)
    done.stderr = err_path.read_text()
    return done


@needs_fuse
def test_a_killed_background_daemon_is_reported_and_cleared(mounts):
    """The same through `fpol mount` without --foreground: its printed pid is the daemon."""
    mounts.mnt.mkdir(exist_ok=True)
    try:
        done = fpol_mount_bg(mounts)
        assert done.returncode == 0, done.stderr
        pid = int(done.stdout.strip())
        assert Path(mounts.mnt, "r.txt").read_bytes() == b"read me"
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        assert mount_state(str(mounts.mnt))[0] == "dead"
        line = next(l for l in fpol("status").stdout.splitlines()
                    if l.startswith(f"mount {mounts.mnt}: "))
        assert line.startswith(f"mount {mounts.mnt}: {mounts.src}, ") and ", DEAD" in line
        # A second `fpol mount` there clears it and works.
        done = fpol_mount_bg(mounts)
        assert done.returncode == 0 and "cleared a dead mount" in done.stderr
        pid = int(done.stdout.strip())
        assert Path(mounts.mnt, "r.txt").read_bytes() == b"read me"
        assert fpol("umount", str(mounts.mnt)).returncode == 0
        assert wait_gone(pid)
    finally:
        if mount_entry(str(mounts.mnt)) is not None:
            subprocess.run(["umount", "-l", str(mounts.mnt)])
        for p in daemon_pids_for(mounts.mnt):
            os.kill(p, signal.SIGKILL)


# --- 5. /dev/fuse errors, and mount(2) failing ----------------------------------------------

def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def mount_dirs(tmp_path):
    if _NO_FUSE is not None:
        pytest.skip(f"real FUSE mounts: {_NO_FUSE}")
    policy = tmp_path / "p.fpol"
    policy.write_text("policy p\ndeny write under /ro\n")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_text("f")
    yield policy, src, mnt
    while mount_entry(str(mnt)) is not None:  # only if a test failed: nothing may stay
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def refused_mount(capsys, policy, src, mnt, code: int) -> str:
    """mount(...) fails with `code` and one clear line, and leaves nothing behind: no
    mount, no descriptor, no daemon."""
    fds = fd_count()
    assert mount_fn(str(policy), str(src), str(mnt), foreground=True) == code
    line = one_clear_line(capsys.readouterr().err)
    assert line.startswith("fpol mount: ") and "nothing mounted" in line
    assert mount_entry(str(mnt)) is None
    assert fd_count() == fds
    assert not daemon_pids_for(mnt)
    return line


def test_no_fuse_device(mount_dirs, capsys, monkeypatch, tmp_path):
    from fpol.runtime.fuse import device

    monkeypatch.setattr(device, "DEVICE", str(tmp_path / "no-such-device"))
    line = refused_mount(capsys, *mount_dirs, code=3)
    assert "no-such-device on this machine" in line and "modprobe fuse" in line


def test_a_fuse_device_that_does_not_open(mount_dirs, capsys, monkeypatch, tmp_path):
    from fpol.runtime.fuse import device

    not_a_device = tmp_path / "a-directory"
    not_a_device.mkdir()
    monkeypatch.setattr(device, "DEVICE", str(not_a_device))
    line = refused_mount(capsys, *mount_dirs, code=3)
    assert f"cannot open {not_a_device}: Is a directory" in line
    # A character device whose driver is absent (a major number nobody registered).
    absent = tmp_path / "absent-driver"
    os.mknod(absent, stat.S_IFCHR | 0o666, os.makedev(4000, 0))
    monkeypatch.setattr(device, "DEVICE", str(absent))
    line = refused_mount(capsys, *mount_dirs, code=3)
    assert f"cannot open {absent}" in line


def test_mount_refused_by_the_kernel_leaves_nothing(mount_dirs, capsys, monkeypatch):
    """A device that opens but is not FUSE's: mount(2) fails (EINVAL)."""
    from fpol.runtime.fuse import device

    monkeypatch.setattr(device, "DEVICE", "/dev/null")
    line = refused_mount(capsys, *mount_dirs, code=3)
    assert "failed: Invalid argument" in line and "the kernel refused the FUSE mount" in line


@pytest.mark.parametrize("case", ["mountpoint is a file", "no mountpoint", "no source"])
def test_bad_paths_are_refused_before_mounting(mount_dirs, capsys, case, tmp_path):
    policy, src, mnt = mount_dirs
    if case == "mountpoint is a file":
        mnt = tmp_path / "file"
        mnt.write_text("")
        expect = "is not a directory"
    elif case == "no mountpoint":
        mnt = tmp_path / "nowhere"
        expect = "does not exist"
    else:
        src = tmp_path / "nothing"
        expect = "does not exist"
    assert expect in refused_mount(capsys, policy, src, mnt, code=2)


def test_bad_paths_in_background_mode_leave_no_daemon(mount_dirs, tmp_path):
    policy, src, _ = mount_dirs
    mnt = tmp_path / "file"
    mnt.write_text("")
    done = fpol("mount", str(policy), str(src), str(mnt))
    assert done.returncode == 2 and done.stdout == ""  # no daemon pid: none was started
    assert "is not a directory" in one_clear_line(done.stderr)
    assert not daemon_pids_for(mnt)


@needs_fuse
def test_a_second_mount_on_a_live_fpol_mount_is_refused(mounts):
    m = mounts.start()
    entries = open("/proc/self/mountinfo").read().count(f" {m.mnt} ")
    done = fpol("mount", str(mounts.policy), str(mounts.src), str(m.mnt), "--foreground")
    assert done.returncode == 2
    line = one_clear_line(done.stderr)
    assert "already an fpol mount" in line and f"fpol umount {m.mnt}" in line
    assert open("/proc/self/mountinfo").read().count(f" {m.mnt} ") == entries
    assert daemon_pids_for(m.mnt) == [m.proc.pid]  # only the first daemon
    assert Path(m.path("r.txt")).read_bytes() == b"read me"  # which still serves


@needs_fuse
def test_an_aborted_connection_ends_the_daemon_and_removes_the_mount(mounts, tmp_path):
    """/sys/fs/fuse/connections/N/abort: the daemon's reads fail with ENODEV; it exits 0
    and removes the mount the abort left dead, and the next mount works."""
    m = mounts.start()
    ctl = tmp_path / "fusectl"  # fusectl is one superblock: a private mount shows it all
    ctl.mkdir()
    subprocess.run(["mount", "-t", "fusectl", "fusectl", str(ctl)], check=True)
    try:
        conn = mount_entry(str(m.mnt)).dev.split(":")[1]
        fd = os.open(m.path("r.txt"), os.O_RDONLY)
        (ctl / conn / "abort").write_text("1")
        assert m.proc.wait(timeout=20) == 0
    finally:
        subprocess.run(["umount", str(ctl)], check=True)
    try:
        assert "was aborted; removed the dead mount" in m.stderr()
        assert "Traceback" not in m.stderr()
        assert mount_entry(str(m.mnt)) is None
    finally:
        errno_of(os.close, fd)
    assert (m.source / "r.txt").read_bytes() == b"read me"
    again = mounts.start(audit=tmp_path / "again.log")
    assert Path(again.path("r.txt")).read_bytes() == b"read me"


class SocketDevice:
    """A Channel over one end of a SOCK_SEQPACKET pair (message boundaries, like
    /dev/fuse); the test plays the kernel on the other end."""

    def __init__(self):
        from fpol.runtime.fuse.device import Channel

        self.kernel, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.logged: list[str] = []
        self.ch = Channel(daemon.detach(), log=self.logged.append)

    def request(self, unique: int, opcode: int = 3, body: bytes = b"", length: int = None):
        from fpol.runtime.fuse import protocol as P

        n = P.IN_HEADER.size + len(body) if length is None else length
        self.kernel.send(P.IN_HEADER.pack(len=n, opcode=opcode, unique=unique, nodeid=1, uid=0,
                                          gid=0, pid=1, total_extlen=0, padding=0) + body)

    def replies(self) -> list[tuple[int, int]]:
        from fpol.runtime.fuse import protocol as P

        out = []
        self.kernel.setblocking(False)
        try:
            while True:
                h = P.OUT_HEADER.unpack(self.kernel.recv(1 << 16))
                out.append((h.unique, h.error))
        except BlockingIOError:
            pass
        finally:
            self.kernel.setblocking(True)
        return out

    def close(self):
        self.ch.close()
        self.kernel.close()


@pytest.fixture
def sockdev():
    d = SocketDevice()
    yield d
    d.close()


def test_short_and_malformed_requests_are_skipped(sockdev):
    from fpol.runtime.fuse.device import Unmounted

    sockdev.kernel.send(b"\x05\x00\x00")  # shorter than a header
    sockdev.request(7, length=200)  # says 200 bytes, is 40: answered EIO, skipped
    sockdev.request(8, body=b"ok")
    req = sockdev.ch.read()
    assert (req.unique, bytes(req.body)) == (8, b"ok")
    assert sockdev.replies() == [(7, -errno.EIO)]
    assert sockdev.ch.malformed == 2 and len(sockdev.logged) == 2
    assert "shorter than a request header" in sockdev.logged[0]
    sockdev.kernel.close()  # the other end gone: the end of the connection
    with pytest.raises(Unmounted):
        sockdev.ch.read()


@pytest.mark.parametrize("err", [errno.EINTR, errno.EAGAIN, errno.ENOENT])
def test_transient_read_errors_are_retried(sockdev, monkeypatch, err):
    real = os.readv
    failures = [err, err]

    def flaky(fd, bufs):
        if failures:
            raise OSError(failures.pop(), os.strerror(err))
        return real(fd, bufs)

    sockdev.request(9)
    monkeypatch.setattr(os, "readv", flaky)
    assert sockdev.ch.read().unique == 9 and not failures


@pytest.mark.parametrize("err,outcome", [(errno.ENODEV, "Unmounted"),
                                         (errno.ECONNABORTED, "Unmounted"),
                                         (errno.EIO, "DeviceError")])
def test_final_read_errors_end_the_channel(sockdev, monkeypatch, err, outcome):
    from fpol.runtime.fuse import device

    def broken(fd, bufs):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "readv", broken)
    with pytest.raises(getattr(device, outcome)) as e:
        sockdev.ch.read()
    if outcome == "DeviceError":
        assert "Input/output error (EIO)" in str(e.value)


def test_reply_errors(sockdev, monkeypatch):
    """A reply to a request the kernel dropped (ENOENT) is not an error; a reply it rejects
    (EINVAL) is replaced by EIO so that the caller is not left waiting; ENODEV ends it."""
    from fpol.runtime.fuse.device import Unmounted

    real = os.write
    script = []

    def kernel(fd, data):
        if script:
            e = script.pop(0)
            if e:
                raise OSError(e, os.strerror(e))
        return real(fd, data)

    monkeypatch.setattr(os, "write", kernel)
    script[:] = [errno.ENOENT]
    sockdev.ch.reply(11, b"x" * 8)
    assert sockdev.replies() == [] and sockdev.ch.rejected == 0
    script[:] = [errno.EINVAL, 0]
    sockdev.ch.reply(12, b"x" * 8)
    assert sockdev.replies() == [(12, -errno.EIO)]
    assert sockdev.ch.rejected == 1 and "rejected a reply" in sockdev.logged[-1]
    script[:] = [errno.EINVAL, errno.EINVAL]  # the EIO rejected too: given up, no loop
    sockdev.ch.reply(13, b"")
    assert sockdev.replies() == [] and sockdev.ch.rejected == 3  # the reply and its EIO
    assert not script
    script[:] = [errno.ENODEV]
    with pytest.raises(Unmounted):
        sockdev.ch.reply(14, b"")


@pytest.fixture
def raw_fuse(tmp_path):
    """A FUSE mount whose /dev/fuse end the test drives itself, past INIT."""
    if _NO_FUSE is not None:
        pytest.skip(f"real FUSE mounts: {_NO_FUSE}")
    from fpol.runtime import libc
    from fpol.runtime.fuse import protocol as P
    from fpol.runtime.fuse.device import DEVICE, Channel

    mnt = tmp_path / "raw"
    mnt.mkdir()
    logged: list[str] = []
    ch = Channel(os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC), log=logged.append)
    libc.mount("fpoltest", str(mnt), "fuse.fpoltest", libc.MS_NOSUID | libc.MS_NODEV,
               f"fd={ch.fd},rootmode=40000,user_id=0,group_id=0")
    try:
        while True:
            req = ch.read()
            neg = P.negotiate(P.parse_init(req.body), False)
            ch.reply(req.unique, neg.reply)
            if not neg.retry:
                break
        yield mnt, ch, logged
    finally:
        ch.close()  # aborts the connection: nothing can hang on it
        libc.umount2(str(mnt), libc.MNT_DETACH)


STAT_CHILD = """
import os, sys
try:
    os.stat(sys.argv[1])
    print(0)
except OSError as e:
    print(e.errno)
"""


@pytest.mark.parametrize("bad", ["positive error", "wrong length", "oversized payload"])
def test_a_reply_the_kernel_rejects_becomes_eio(raw_fuse, bad):
    """On a real connection: a malformed reply is refused by the kernel (EINVAL); the
    channel answers EIO instead, so the caller gets an error, not a hang; a reply to the
    request already answered (ENOENT) is ignored."""
    from fpol.runtime.fuse import protocol as P

    mnt, ch, logged = raw_fuse
    child = subprocess.Popen([sys.executable, "-c", STAT_CHILD, str(mnt / "x")],
                             stdout=subprocess.PIPE, text=True)
    try:
        req = ch.read()
        if bad == "positive error":
            data = P.OUT_HEADER.pack(len=16, error=5, unique=req.unique)
        elif bad == "wrong length":
            data = P.OUT_HEADER.pack(len=64, error=0, unique=req.unique)
        else:
            data = P.reply(req.unique, b"\0" * 8192)
        ch.send(data)
        assert child.communicate(timeout=30)[0].strip() == str(errno.EIO)
        assert ch.rejected == 1 and "rejected a reply" in logged[0]
        ch.reply_error(req.unique, errno.ENOENT)  # the request is gone: ENOENT, ignored
        assert ch.rejected == 1
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


SERVE_FAILING = """
import sys
from fpol.runtime.fuse.device import Channel, DeviceError
from fpol.runtime.mount import _serve
import os

class Broken:
    ch = Channel(os.open(os.devnull, os.O_RDWR))
    def serve(self):
        raise {exc}
    def summary(self):
        return "served 0 requests"

sys.exit(_serve(Broken(), sys.argv[1], "", sys.stderr))
"""


@pytest.mark.parametrize("exc,says", [
    ('DeviceError("reading /dev/fuse failed: Input/output error (EIO)")',
     "stopped: reading /dev/fuse failed: Input/output error (EIO);"),
    ('KeyError("a bug")', "stopped: KeyError: 'a bug' (at <string>:"),
])
def test_a_daemon_that_fails_says_so_in_one_line(tmp_path, exc, says):
    done = subprocess.run([sys.executable, "-c", SERVE_FAILING.format(exc=exc), str(tmp_path)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    line = one_clear_line(done.stderr)
    assert says in line and "the files on the source are untouched" in line


# --- 6. a policy that changes during a compile; atomic outputs; the object cache ------------

ORIGINAL = b"policy first\ndeny write under /a\n"
SWAPPED = b"policy second\ndeny write under /b\ndeny read under /c\naudit open under /d\n"


def instances_for(policy: bytes) -> list[str]:
    """The instance names the policy's classes get (`<name>_<n>`)."""
    from fpol.compiler.driver import check

    checked = check(policy, "p.fpol").require()
    return sorted(f"{checked.policy.name}_{i}" for i in range(len(checked.classes.classes)))


def instances_of(obj: Path) -> list[str]:
    from fpol.runtime import libbpf

    with libbpf.BpfObject(str(obj)) as o:
        return sorted(m.name for m in o.maps() if m.type == libbpf.BPF_MAP_TYPE_STRUCT_OPS)


def check_programs_of(obj: Path) -> list[str]:
    from fpol.runtime import libbpf

    with libbpf.BpfObject(str(obj)) as o:
        return sorted(p.name for p in o.programs())


@pytest.fixture
def compiler():
    from fpol.compiler.clang import ToolMissing, find_clang, include_flags

    try:
        find_clang()
        include_flags()
    except ToolMissing as e:
        pytest.skip(str(e))


def test_a_policy_read_through_a_fifo_is_read_once(compiler, tmp_path):
    """A FIFO gives its content once: a compiler that opened the file a second time would
    wait for a writer that never comes (and hit the timeout)."""
    fifo = tmp_path / "policy.fpol"
    os.mkfifo(fifo)
    out = tmp_path / "out" / "p.bpf.o"
    out.parent.mkdir()
    proc = subprocess.Popen(FPOL + ["compile", str(fifo), "-o", str(out)], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(fifo, "wb") as f:
        f.write(ORIGINAL)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"sha256 {hashlib.sha256(ORIGINAL).hexdigest()}" in stdout
    assert instances_of(out) == instances_for(ORIGINAL)


@pytest.mark.parametrize("stage", ["after parsing", "before lowering", "between the objects"])
def test_a_policy_changed_during_compile_is_compiled_as_it_was_read(compiler, tmp_path, capsys,
                                                                    monkeypatch, stage):
    """The file is rewritten (another policy name, more rules) while the compile runs: both
    objects are the policy as read, and the output names the hash of what was compiled."""
    from fpol import cli
    from fpol.compiler import clang, driver, lower

    policy = tmp_path / "p.fpol"
    policy.write_bytes(ORIGINAL)
    swapped = []

    def swap():
        if not swapped:
            policy.write_bytes(SWAPPED)
            swapped.append(stage)

    if stage == "after parsing":
        real = driver.analyse
        monkeypatch.setattr(driver, "analyse", lambda *a, **kw: (swap(), real(*a, **kw))[1])
    elif stage == "before lowering":
        real = lower.lower
        monkeypatch.setattr(lower, "lower", lambda *a, **kw: (swap(), real(*a, **kw))[1])
    else:
        real = clang.compile_c
        monkeypatch.setattr(clang, "compile_c",
                            lambda src, out, name: (real(src, out, name), swap()))
    out = tmp_path / "p.bpf.o"
    assert cli.main(["compile", str(policy), "-o", str(out)]) == 0
    assert swapped == [stage] and policy.read_bytes() == SWAPPED
    said = capsys.readouterr().out
    assert f"from {policy} (sha256 {hashlib.sha256(ORIGINAL).hexdigest()})" in said
    assert instances_of(out) == instances_for(ORIGINAL)
    assert instances_for(ORIGINAL) != instances_for(SWAPPED)  # so the check above tells
    check_obj = tmp_path / "p.check.bpf.o"
    assert "fpol_check" in check_programs_of(check_obj)
    # Its debug info names the C it was built from, which is named after the policy.
    assert b"first.check.bpf.c" in check_obj.read_bytes()
    assert b"second" not in check_obj.read_bytes()


CLANG_WRAPPER = """#!/bin/sh
# Stands in for clang: {mode} when building a check object (fail-all: any object),
# otherwise the real clang.
out=""; prev=""
for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
if [ "{mode}" = fail-all ]; then
    printf 'half an object' > "$out"; echo "clang: simulated failure" >&2; exit 1
fi
case "$*" in
*.check.bpf.c*)
    case "{mode}" in
    fail) printf 'half an object' > "$out"; echo "clang: simulated failure" >&2; exit 1 ;;
    interrupt) printf 'half an object' > "$out"; kill -INT $PPID; sleep 60; exit 1 ;;
    esac ;;
esac
[ "{mode}" = slow ] && sleep 1
exec {clang} "$@"
"""


def clang_wrapper(tmp_path: Path, mode: str) -> str:
    from fpol.compiler.clang import find_clang

    path = tmp_path / f"clang-{mode}"
    path.write_text(CLANG_WRAPPER.format(mode=mode, clang=find_clang()))
    path.chmod(0o755)
    return str(path)


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def dir_state(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.mark.parametrize("mode,code", [("fail", 1), ("interrupt", 130)])
@pytest.mark.parametrize("previous", [True, False], ids=["over-old-output", "fresh"])
def test_a_failed_or_interrupted_compile_leaves_the_output_as_it_was(compiler, tmp_path, mode,
                                                                     code, previous):
    """clang fails (or the compile is interrupted) on the second object after writing half of
    it: OUT.bpf.o and OUT.check.bpf.o are both the old ones (or absent), no half-written
    object, no new one beside an old one, no temporary file."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    policy = tmp_path / "p.fpol"
    policy.write_bytes(ORIGINAL)
    out = outdir / "p.bpf.o"
    if previous:
        assert fpol("compile", str(policy), "-o", str(out)).returncode == 0
    before = dir_state(outdir)
    policy.write_bytes(SWAPPED)
    env = dict(os.environ, CLANG=clang_wrapper(tmp_path, mode))
    # SIGINT as a terminal delivers it: a runner that starts the tests in the background
    # may hand them SIGINT ignored, and fpol (like any program) would then ignore it too.
    done = subprocess.run(FPOL + ["compile", str(policy), "-o", str(out)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=120, env=env,
                          preexec_fn=_sigint_default)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    if mode == "fail":
        assert "clang: simulated failure" in done.stderr
    assert dir_state(outdir) == before
    if previous:
        assert instances_of(out) == instances_for(ORIGINAL)


def test_text_stages_are_written_atomically(compiler, tmp_path, monkeypatch):
    """`--emit c -o FILE` replaces FILE whole: a failure while writing leaves the old one."""
    from fpol import cli

    policy = tmp_path / "p.fpol"
    policy.write_bytes(ORIGINAL)
    out = tmp_path / "p.c"
    out.write_text("old\n")

    def broken_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        cli.main(["compile", str(policy), "--emit", "c", "-o", str(out)])
    assert dir_state(tmp_path) == {"p.fpol": ORIGINAL, "p.c": b"old\n"}


BUILD_CHILD = """
import sys
from fpol.compiler.driver import check_file
from fpol.runtime.objects import build
print(build(check_file(sys.argv[1]).require(), sys.argv[2]).path)
"""


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file())


@pytest.mark.parametrize("which", ["check", "struct_ops"])
def test_concurrent_builds_of_one_policy_do_not_corrupt_the_cache(compiler, tmp_path, which):
    policy = tmp_path / "p.fpol"
    policy.write_bytes(ORIGINAL)
    cache = tmp_path / "cache"
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), CLANG=clang_wrapper(tmp_path, "slow"))
    procs = [subprocess.Popen([sys.executable, "-c", BUILD_CHILD, str(policy), which],
                              cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    paths = {r[0].strip() for r in results}
    assert len(paths) == 1  # one entry, whoever renamed last
    assert cache_files(cache) == [Path(paths.pop())]  # and no temporary files
    obj = cache_files(cache)[0]
    if which == "check":
        assert "fpol_check" in check_programs_of(obj)
    else:
        assert instances_of(obj) == instances_for(ORIGINAL)


def test_a_damaged_or_failed_cache_entry_is_not_used(compiler, tmp_path, monkeypatch):
    from fpol.compiler.clang import CompileFailure
    from fpol.compiler.driver import check
    from fpol.runtime.objects import build

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checked = check(ORIGINAL, "p.fpol").require()
    path = Path(build(checked, "check").path)
    good = path.read_bytes()
    path.write_bytes(good[:100])  # truncated by something else (a full disk, say)
    assert Path(build(checked, "check").path).read_bytes()[:4] == b"\x7fELF"
    assert "fpol_check" in check_programs_of(path)
    # A build that fails leaves nothing in the cache, not even its temporary file.
    path.unlink()
    monkeypatch.setenv("CLANG", clang_wrapper(tmp_path, "fail-all"))
    with pytest.raises(CompileFailure):
        build(checked, "check")
    assert cache_files(tmp_path / "cache") == []
