"""The systemd service: contrib/systemd/fpol-mount@.service and sd_notify (runtime/sdnotify.py).

- sd_notify sends its state to a path or an abstract $NOTIFY_SOCKET, and nothing without one;
- a real `fpol mount --foreground` says READY=1 once the mount is up, and SIGTERM (what
  `systemctl stop` sends) unmounts it cleanly with exit 0;
- the unit passes `systemd-analyze verify` (where systemd-analyze exists), and its ExecStart
  is a command line `fpol` accepts.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fpol.runtime.sdnotify import notify

from fusemount import missing as mount_missing

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "systemd" / "fpol-mount@.service"


def _listener(tmp_path: Path) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(20)
    return sock, path


def test_notify_sends_state_to_a_path_socket(tmp_path):
    sock, path = _listener(tmp_path)
    with sock:
        assert notify("READY=1", {"NOTIFY_SOCKET": path}) is True
        assert sock.recv(4096) == b"READY=1"


def test_notify_reaches_an_abstract_socket():
    name = f"fpol-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_without_a_socket_sends_nothing(tmp_path):
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "relative/path"}) is False
    # A socket that is not there: the daemon goes on, notify says it was not sent.
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent.sock")}) is False


def test_foreground_mount_notifies_ready_and_sigterm_unmounts(tmp_path):
    why = mount_missing()
    if why:
        pytest.skip(f"real FUSE mount unavailable: {why}")
    from fpol.runtime.mount import mount_entry

    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "hello").write_text("hi\n")
    sock, path = _listener(tmp_path)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    err = open(tmp_path / "stderr", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "fpol.runtime.mount", "mount", "--foreground",
                             "--mode", "daemon", "--log", str(tmp_path / "daemon.log"),
                             str(ROOT / "examples" / "secrets.fpol"), str(src), str(mnt)],
                            env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=str(ROOT))
    try:
        with sock:
            message = sock.recv(4096)
        assert message == b"READY=1"
        # Ready means served: the mount is there and answers.
        assert mount_entry(str(mnt)) is not None
        assert (mnt / "hello").read_text() == "hi\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, (tmp_path / "stderr").read_text()
        assert mount_entry(str(mnt)) is None
        assert "unmounted" in (tmp_path / "stderr").read_text() + \
            (tmp_path / "daemon.log").read_text()
    finally:
        err.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mount_entry(str(mnt)) is not None:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_is_a_notify_service_reading_the_instance_env_file():
    s = _unit_settings()
    assert s["Type"] == ["notify"]
    assert s["EnvironmentFile"] == ["/etc/fpol/%i.env"]
    assert s["KillMode"] == ["mixed"]  # SIGTERM to the daemon alone: it unmounts itself
    exec_start = s["ExecStart"][0]
    assert "--foreground" in exec_start.split()
    for var in ("${POLICY}", "${SOURCE}", "${MOUNTPOINT}"):
        assert var in exec_start


def test_unit_exec_start_is_a_command_line_fpol_accepts():
    """Expand ExecStart as systemd does ($X splits into words, ${X} is one word) and parse
    it with fpol's own parser."""
    from fpol.cli import build_parser

    env = {"POLICY": "/etc/fpol/data policy.fpol", "SOURCE": "/srv/data",
           "MOUNTPOINT": "/mnt/data", "FPOL_OPTIONS": "--audit /var/log/fpol/data.audit --cache off"}
    words = shlex.split(_unit_settings()["ExecStart"][0])
    argv: list[str] = []
    for w in words:
        m = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", w)
        if m and m.group(1):
            argv.append(env[m.group(1)])
        elif m:
            argv.extend(env.get(m.group(2), "").split())
        else:
            argv.append(w)
    assert argv[:2] == ["/usr/bin/env", "fpol"]
    args = build_parser().parse_args(argv[2:])
    assert args.command == "mount" and args.foreground
    assert (args.policy, args.source, args.mountpoint) == (env["POLICY"], "/srv/data", "/mnt/data")
    assert args.audit == "/var/log/fpol/data.audit" and args.cache == "off"
    # An env file without FPOL_OPTIONS: `$FPOL_OPTIONS` expands to no word at all.
    del env["FPOL_OPTIONS"]
    argv = [env[w[2:-1]] if w.startswith("${") else w for w in words if w != "$FPOL_OPTIONS"]
    args = build_parser().parse_args(argv[2:])
    assert args.audit is None and args.policy == env["POLICY"]


def test_unit_passes_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    shutil.copy(UNIT, tmp_path / UNIT.name)
    instance = tmp_path / "fpol-mount@demo.service"
    instance.symlink_to(UNIT.name)
    for unit in (tmp_path / UNIT.name, instance):
        r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                           timeout=120)
        # verify exits 0 even for settings it ignores; those print a warning, so none may.
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    # And the check is live: a bad setting is reported.
    bad = tmp_path / "bad" / "fpol-mount@demo.service"
    bad.parent.mkdir()
    bad.write_text(UNIT.read_text().replace("Type=notify", "Type=notifyy"))
    r = subprocess.run([tool, "verify", str(bad)], capture_output=True, text=True, timeout=120)
    assert "notifyy" in r.stdout + r.stderr
