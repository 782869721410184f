"""`fpol reload`: a live mount's policy swapped without unmounting.

A reload to a stricter policy holds at once, cached entries and attributes included; a
broken policy is refused with its diagnostics and the old one keeps deciding; requests made
while reloads happen are each decided by one policy or the other, never by a mix or an
error; `fpol status` names the policy, its sha256, when it was loaded and the cache mode."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fusemount import Mount, missing

ROOT = Path(__file__).resolve().parent.parent
FPOL = [sys.executable, "-m", "fpol"]

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"real FUSE mounts: {missing()}")

OPEN = "policy open\ndefault allow\n"
STRICT = ("policy strict\ndefault allow\ndeny read under /data with EPERM\n"
          "deny lookup named \"*.hid\" with ENOENT\n")
BROKEN = "policy broken\ndeny wrte under /data\n"


def fpol(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(FPOL + list(args), capture_output=True, text=True, timeout=60,
                          cwd=str(ROOT))


def errno_of(fn, *args) -> int:
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def mounted(tmp_path):
    for name, text in (("open", OPEN), ("strict", STRICT), ("broken", BROKEN)):
        (tmp_path / f"{name}.fpol").write_text(text)
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "f.txt").write_text("data")
    (src / "data" / "x.hid").write_text("hidden")
    # A long cache time: anything still cached after a reload would show.
    m = Mount(tmp_path / "open.fpol", src, tmp_path / "mnt", tmp_path / "audit.log",
              extra_args=("--cache", "60")).start()
    try:
        yield m, tmp_path
    finally:
        assert m.stop() == 0, m.stderr()


def test_a_stricter_policy_holds_at_once_cached_entries_included(mounted):
    m, tmp = mounted
    f, hid = m.path("data/f.txt"), m.path("data/x.hid")
    assert read(f) == b"data" and os.stat(hid).st_size == 6  # both cached for 60 s
    r = fpol("reload", str(m.mnt), str(tmp / "strict.fpol"))
    assert r.returncode == 0, r.stderr
    assert "replaced by strict" in r.stdout and "caches were dropped" in r.stdout
    assert errno_of(read, f) == errno.EPERM
    assert errno_of(os.stat, hid) == errno.ENOENT  # the cached entry is gone
    assert os.stat(f).st_size == 4  # stat is still allowed
    assert (m.source / "data" / "f.txt").read_text() == "data"
    # and back: the looser policy holds at once too
    assert fpol("reload", str(m.mnt), str(tmp / "open.fpol")).returncode == 0
    assert read(f) == b"data" and read(hid) == b"hidden"


def test_a_broken_policy_is_refused_and_the_old_one_stays(mounted):
    m, tmp = mounted
    assert fpol("reload", str(m.mnt), str(tmp / "strict.fpol")).returncode == 0
    r = fpol("reload", str(m.mnt), str(tmp / "broken.fpol"))
    assert r.returncode == 1
    assert "error[FP003]" in r.stderr and "keeps its policy" in r.stderr
    assert "Traceback" not in r.stderr
    assert errno_of(read, m.path("data/f.txt")) == errno.EPERM  # strict still decides
    status = fpol("status", "--format", "json")
    rec = [x for x in json.loads(status.stdout)["mounts"] if x["mountpoint"] == str(m.mnt)][0]
    assert rec["policy"] == "strict"


def test_the_daemon_refuses_what_it_reads_if_it_changed_to_broken(mounted, monkeypatch):
    # The command checks the file, then the daemon reads it again: a file broken in
    # between is refused by the daemon the same way.
    m, tmp = mounted
    from fpol.runtime import reload as reload_mod

    real_ask = reload_mod._ask

    def ask_after_breaking(path, request):
        Path(request["policy"]).write_text(BROKEN)
        return real_ask(path, request)
    monkeypatch.setattr(reload_mod, "_ask", ask_after_breaking)
    target = tmp / "changing.fpol"
    target.write_text(STRICT)
    rc = reload_mod.reload(str(m.mnt), str(target), out=open(os.devnull, "w"),
                           err=open(os.devnull, "w"))
    assert rc == 1
    assert read(m.path("data/f.txt")) == b"data"  # the open policy still decides


def test_status_names_policy_sha_load_time_and_cache(mounted):
    m, tmp = mounted
    before = time.time()
    assert fpol("reload", str(m.mnt), str(tmp / "strict.fpol")).returncode == 0
    data = json.loads(fpol("status", "--format", "json").stdout)
    rec = [x for x in data["mounts"] if x["mountpoint"] == str(m.mnt)][0]
    assert rec["policy"] == "strict"
    assert rec["policy_sha256"] == hashlib.sha256((tmp / "strict.fpol").read_bytes()).hexdigest()
    assert rec["state"] == "live" and rec["mode"] == "daemon"
    assert rec["cache"].startswith("60 s")
    loaded = time.mktime(time.strptime(rec["loaded_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert loaded >= int(before) - 1
    text = fpol("status").stdout
    assert f"policy strict ({tmp / 'strict.fpol'}" in text and rec["policy_sha256"][:12] in text


def test_requests_during_reloads_are_decided_by_one_policy_or_the_other(mounted):
    m, tmp = mounted
    f = m.path("data/f.txt")
    outcomes: list[object] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                outcomes.append(read(f))
            except OSError as e:
                outcomes.append(e.errno)
            try:
                os.stat(m.path("data/x.hid"))
                outcomes.append("hid-seen")
            except OSError as e:
                outcomes.append(("hid", e.errno))
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            name = "strict" if i % 2 == 0 else "open"
            r = fpol("reload", str(m.mnt), str(tmp / f"{name}.fpol"))
            assert r.returncode == 0, r.stderr
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert outcomes
    assert set(outcomes) <= {b"data", errno.EPERM, "hid-seen", ("hid", errno.ENOENT)}, \
        set(outcomes) - {b"data", errno.EPERM, "hid-seen", ("hid", errno.ENOENT)}
    # the last reload was `open`: it decides now
    assert read(f) == b"data"
    assert m.proc.poll() is None, m.stderr()


def test_reload_of_what_is_not_an_fpol_mount_says_so(tmp_path):
    r = fpol("reload", str(tmp_path), str(ROOT / "examples" / "secrets.fpol"))
    assert r.returncode == 2 and "not a live fpol mount" in r.stderr


def test_a_kept_directory_listing_is_not_served_after_a_reload_denies_it(mounted):
    m, tmp = mounted
    d = m.path("data")
    assert sorted(os.listdir(d)) == ["f.txt", "x.hid"]
    assert sorted(os.listdir(d)) == ["f.txt", "x.hid"]  # the kernel may keep it (60 s)
    (tmp / "closed.fpol").write_text("policy closed\ndefault allow\ndeny readdir under /data\n")
    assert fpol("reload", str(m.mnt), str(tmp / "closed.fpol")).returncode == 0
    assert errno_of(os.listdir, d) == errno.EACCES
