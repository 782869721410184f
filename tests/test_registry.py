"""fpol's mount registry (runtime/registry.py), and `fpol umount`/`fpol status` on a kernel
whose mountinfo does not show root_bpf= (the fuse-bpf RFC kernel) as well as on one that
does. The mountinfo is a file of the test's (registry.MOUNTINFO is a seam), so both kernel
behaviours run here; one real daemon mount shows the record made and removed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from fpol.runtime import loader, registry
from fpol.runtime import mount as mountmod
from fpol.runtime.mount import MountEntry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A mountinfo line of a fuse-bpf mount as the RFC kernel prints it: no root_bpf= anywhere.
RFC_LINE = ("120 29 0:{minor} / {mnt} rw,nosuid,nodev,relatime shared:60 - fuse.fpol {src} "
            "rw,user_id=0,group_id=0\n")
# ... and as a kernel that shows root_bpf= in the superblock options would.
SHOWN_LINE = ("120 29 0:{minor} / {mnt} rw,nosuid,nodev,relatime shared:60 - fuse.fpol {src} "
              "rw,user_id=0,group_id=0,root_bpf={policy}_0\n")
BASE = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"


@pytest.fixture
def reg(tmp_path, monkeypatch):
    """A private registry directory (not yet existing, as on a fresh machine) and mountinfo."""
    d = tmp_path / "run" / "fpol" / "mounts"
    info = tmp_path / "mountinfo"
    info.write_text(BASE)
    monkeypatch.setattr(registry, "REGISTRY_DIR", str(d))
    monkeypatch.setattr(registry, "MOUNTINFO", str(info))
    return info


def mounts(info, *lines):
    info.write_text(BASE + "".join(lines))


def rec(mnt="/mnt/a", minor=50, policy="secrets", mode="fuse-bpf", pid=None):
    return registry.MountRecord(mountpoint=mnt, dev=f"0:{minor}", source="/srv/a", policy=policy,
                                policy_path=f"/etc/fpol/{policy}.fpol", policy_sha256="ab" * 32,
                                mode=mode, pid=pid, loaded_at=registry.now())


# --- the registry itself --------------------------------------------------------------------

def test_record_get_all_remove(reg):
    mounts(reg, RFC_LINE.format(minor=50, mnt="/mnt/a", src="/srv/a"))
    assert not os.path.exists(registry.REGISTRY_DIR)
    assert registry.get("/mnt/a") is None and registry.all() == []
    r = rec()
    path = registry.record(r)
    assert os.path.dirname(path) == registry.REGISTRY_DIR  # created, parents too
    assert os.listdir(registry.REGISTRY_DIR) == [os.path.basename(path)]  # no temporary left
    data = json.loads(open(path).read())
    assert set(data) == {"mountpoint", "dev", "source", "policy", "policy_path", "policy_sha256",
                         "mode", "pid", "loaded_at", "log", "cache"}
    assert data["log"] is None and data["cache"] == "off" and data["pid"] is None
    assert registry.get("/mnt/a") == r
    assert registry.all() == [r]
    registry.remove("/mnt/a")
    assert registry.get("/mnt/a") is None and os.listdir(registry.REGISTRY_DIR) == []


def test_stale_records_are_ignored_and_cleaned(reg):
    mounts(reg, RFC_LINE.format(minor=50, mnt="/mnt/a", src="/srv/a"),
           RFC_LINE.format(minor=51, mnt="/mnt/b", src="/srv/b"))
    registry.record(rec("/mnt/a", 50))
    registry.record(rec("/mnt/b", 51))
    registry.record(rec("/mnt/gone", 52))
    mounts(reg, RFC_LINE.format(minor=50, mnt="/mnt/a", src="/srv/a"),
           RFC_LINE.format(minor=77, mnt="/mnt/b", src="/srv/b"))  # b remounted: another dev
    assert [r.mountpoint for r in registry.all()] == ["/mnt/a"]
    assert registry.get("/mnt/b") is None
    assert len(os.listdir(registry.REGISTRY_DIR)) == 1


def test_damaged_record_is_stale(reg):
    mounts(reg, RFC_LINE.format(minor=50, mnt="/mnt/a", src="/srv/a"))
    path = registry.record(rec())
    with open(path, "w") as f:
        f.write("{not json")
    assert registry.get("/mnt/a") is None and not os.path.exists(path)


def test_remove_with_dev_spares_a_newer_mount(reg):
    mounts(reg, RFC_LINE.format(minor=60, mnt="/mnt/a", src="/srv/a"))
    registry.record(rec(minor=60))
    registry.remove("/mnt/a", dev="0:50")  # an old daemon of that mount point exiting
    assert registry.get("/mnt/a") is not None
    registry.remove("/mnt/a", dev="0:60")
    assert registry.get("/mnt/a") is None


def test_bad_mode_refused(reg):
    with pytest.raises(ValueError):
        registry.record(rec(mode="kernel"))


# --- umount: which policy to unload, with and without root_bpf= -----------------------------

@pytest.fixture
def fake_umount(reg, monkeypatch):
    """umount() against the fake mountinfo: unmounting removes the line; unloads recorded."""
    from fpol.runtime import libc

    unloaded = []
    state = {"lines": {}}

    def set_mounts(**lines):
        state["lines"] = dict(lines)
        mounts(reg, *lines.values())

    def entry_of(path):
        line = state["lines"].get(path)
        if line is None:
            return "none", None
        left, _, right = line.partition(" - ")
        tail = right.split()
        return "live", MountEntry(path, tail[0], tail[1], tail[2], left.split()[2])

    def umount2(path, flags):
        state["lines"].pop(path, None)
        mounts(reg, *state["lines"].values())

    monkeypatch.setattr(mountmod, "mount_state", entry_of)
    monkeypatch.setattr(mountmod, "_resolve", lambda p: p)
    monkeypatch.setattr(libc, "umount2", umount2)
    monkeypatch.setattr(loader, "unload", lambda policy: unloaded.append(policy) or [])
    return set_mounts, unloaded


def test_umount_unloads_the_recorded_policy_when_mountinfo_lacks_root_bpf(fake_umount):
    set_mounts, unloaded = fake_umount
    set_mounts(**{"/mnt/a": RFC_LINE.format(minor=50, mnt="/mnt/a", src="/srv/a")})
    registry.record(rec("/mnt/a", 50, "secrets"))
    err = io.StringIO()
    assert mountmod.umount("/mnt/a", err=err) == 0
    assert unloaded == ["secrets"], err.getvalue()
    assert "unloaded policy secrets" in err.getvalue()
    assert registry.all() == [] and os.listdir(registry.REGISTRY_DIR) == []


def test_umount_keeps_a_policy_another_mount_uses(fake_umount):
    set_mounts, unloaded = fake_umount
    set_mounts(**{"/mnt/a": RFC_LINE.format(minor=50, mnt="/mnt/a", src="/srv/a"),
                  "/mnt/b": RFC_LINE.format(minor=51, mnt="/mnt/b", src="/srv/b")})
    registry.record(rec("/mnt/a", 50, "secrets"))
    registry.record(rec("/mnt/b", 51, "secrets"))
    assert mountmod.umount("/mnt/a", err=io.StringIO()) == 0
    assert unloaded == []
    assert mountmod.umount("/mnt/b", err=io.StringIO()) == 0
    assert unloaded == ["secrets"]


def test_umount_with_root_bpf_shown_needs_no_record(fake_umount):
    set_mounts, unloaded = fake_umount
    set_mounts(**{"/mnt/a": SHOWN_LINE.format(minor=50, mnt="/mnt/a", src="/srv/a",
                                              policy="home")})
    assert mountmod.umount("/mnt/a", err=io.StringIO()) == 0
    assert unloaded == ["home"]


def test_umount_of_a_daemon_mount_unloads_nothing(fake_umount):
    set_mounts, unloaded = fake_umount
    set_mounts(**{"/mnt/a": RFC_LINE.format(minor=50, mnt="/mnt/a", src="/srv/a")})
    registry.record(rec("/mnt/a", 50, "secrets", mode="daemon", pid=1234))
    assert mountmod.umount("/mnt/a", err=io.StringIO()) == 0
    assert unloaded == [] and registry.all() == []


def test_umount_without_root_bpf_or_record_unloads_nothing(fake_umount):
    set_mounts, unloaded = fake_umount
    set_mounts(**{"/mnt/a": RFC_LINE.format(minor=50, mnt="/mnt/a", src="/srv/a")})
    assert mountmod.umount("/mnt/a", err=io.StringIO()) == 0
    assert unloaded == []


# --- status -----------------------------------------------------------------------------------

def test_status_names_each_mounts_policy_from_the_registry(reg, monkeypatch, capsys):
    from fpol import cli

    mounts(reg, RFC_LINE.format(minor=50, mnt="/mnt/a", src="/srv/a"),
           RFC_LINE.format(minor=51, mnt="/mnt/b", src="/srv/b"))
    registry.record(rec("/mnt/a", 50, "secrets", pid=4321))
    monkeypatch.setattr(loader, "status", lambda: [])
    monkeypatch.setattr(mountmod, "fpol_mounts", lambda: [
        ("live", MountEntry("/mnt/a", "fuse.fpol", "/srv/a", "rw,user_id=0", "0:50")),
        ("live", MountEntry("/mnt/b", "fuse.fpol", "/srv/b", "rw,user_id=0", "0:51"))])
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    line_a = next(l for l in out.splitlines() if "/mnt/a" in l)
    assert "policy secrets (/etc/fpol/secrets.fpol, fuse-bpf, daemon pid 4321" in line_a
    line_b = next(l for l in out.splitlines() if "/mnt/b" in l)
    assert "policy unknown" in line_b


# --- a real daemon mount records itself, and fpol umount removes the record -------------------

def test_real_daemon_mount_is_recorded_and_forgotten(tmp_path):
    from fusemount import missing

    why = missing()
    assert why is None, why  # this machine runs FUSE tests; they must not skip
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"x")
    policy = os.path.join(ROOT, "examples", "secrets.fpol")
    run = [sys.executable, "-m", "fpol.runtime.mount"]
    proc = subprocess.run(run + ["mount", policy, str(src), str(mnt), "--mode", "daemon",
                                 "--log", str(tmp_path / "log")],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout.split()[-1])
    try:
        r = registry.get(str(mnt))
        assert r is not None, os.listdir(registry.REGISTRY_DIR)
        assert (r.policy, r.mode, r.pid, r.source) == ("secrets", "daemon", pid, str(src))
        assert r.policy_path == policy and len(r.policy_sha256) == 64
        assert r.dev == mountmod.mount_entry(str(mnt)).dev
        status = subprocess.run([sys.executable, "-m", "fpol", "status"], capture_output=True,
                                text=True, cwd=ROOT, timeout=30)
        assert f"mount {mnt}: {src}, served; policy secrets ({policy}, daemon, daemon pid {pid}" \
            in status.stdout, status.stdout
    finally:
        done = subprocess.run(run + ["umount", str(mnt)], capture_output=True, text=True,
                              cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stderr
    assert registry.get(str(mnt)) is None
    assert not os.path.exists(registry._file(str(mnt)))


def test_leftovers_of_killed_daemons_are_removed_when_old(monkeypatch, tmp_path):
    # A daemon killed outright leaves its control socket, a killed writer its temporary
    # file; listing the registry removes them once they are old, never a young one (a
    # starting daemon binds its socket just before it records its mount).
    monkeypatch.setattr(registry, "REGISTRY_DIR", str(tmp_path))
    monkeypatch.setattr(registry, "MOUNTINFO", str(tmp_path / "mountinfo"))
    (tmp_path / "mountinfo").write_text("")
    old_sock, young_sock = tmp_path / ("a" * 32 + ".sock"), tmp_path / ("b" * 32 + ".sock")
    old_tmp = tmp_path / ("c" * 32 + ".json.1-ff.tmp")
    for p in (old_sock, young_sock, old_tmp):
        p.write_text("")
    long_ago = time.time() - 3600
    for p in (old_sock, old_tmp):
        os.utime(p, (long_ago, long_ago))
    assert registry.all() == []
    assert not old_sock.exists() and not old_tmp.exists()
    assert young_sock.exists()
