"""fpol's own record of its mounts: which policy each mount enforces, and how.

The kernel's mountinfo is not enough to tell: the fuse-bpf RFC kernel does not print
`root_bpf=` among a mount's options, and a daemon mount names no policy at all. So `fpol
mount` writes one JSON file per mount under /run/fpol/mounts/ (a tmpfs: records do not
outlive a reboot, and neither do mounts), and `fpol umount` and `fpol status` read it.

A record is valid while its mount is: the mount point still carries a mount with the
superblock (major:minor) the record names. Records whose mount is gone, or whose mount
point now carries another mount, are stale: readers ignore them and remove their files.
Each file is written whole (a temporary file in the same directory, then a rename), so a
reader never sees half a record.

Seams for tests: REGISTRY_DIR (where the files are) and MOUNTINFO (where mounts are read).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Optional

from .files import replace_atomically

if TYPE_CHECKING:
    from typing import TypeGuard  # Python 3.10

REGISTRY_DIR = "/run/fpol/mounts"
MOUNTINFO = "/proc/self/mountinfo"
MODES = ("daemon", "fuse-bpf")


@dataclass(frozen=True)
class MountRecord:
    mountpoint: str  # absolute, resolved
    dev: str  # major:minor of the mount's superblock, from mountinfo
    source: str  # the backing directory
    policy: str  # the policy's name (its fuse_ops instances are <policy>_<n>)
    policy_path: str  # the .fpol file it was compiled from
    policy_sha256: str  # of that file's bytes as compiled
    mode: str  # "daemon" or "fuse-bpf"
    pid: Optional[int]  # the daemon's, or None (a fuse-bpf mount that needs none)
    loaded_at: str  # ISO 8601, UTC
    log: Optional[str] = None  # the daemon's log file, if it has one
    cache: str = "off"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str) -> "MountRecord":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(MountRecord)}
        rec = MountRecord(**{k: v for k, v in data.items() if k in known})
        if rec.mode not in MODES or not isinstance(rec.mountpoint, str):
            raise ValueError(f"mode {rec.mode!r}")
        return rec


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
            continue
        out.append(field[i])
        i += 1
    return "".join(out)


def mounted_devs() -> dict[str, str]:
    """mount point -> major:minor of the topmost mount there."""
    out: dict[str, str] = {}
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields_ = line.partition(" - ")[0].split()
                if len(fields_) >= 5:
                    out[unescape(fields_[4])] = fields_[2]
    except OSError:
        pass
    return out


def _file(mountpoint: str) -> str:
    key = hashlib.sha256(mountpoint.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(REGISTRY_DIR, key + ".json")


def record_file(mountpoint: str) -> str:
    """The file that holds (or would hold) the record of `mountpoint`; the daemon's control
    socket sits beside it with the suffix .sock (runtime/reload.py)."""
    return _file(mountpoint)


def record(rec: MountRecord) -> str:
    """Write (or replace) the record of rec.mountpoint; returns its file."""
    if rec.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {rec.mode!r}")
    os.makedirs(REGISTRY_DIR, mode=0o755, exist_ok=True)
    path = _file(rec.mountpoint)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(rec.to_json())
            f.flush()
            os.fsync(f.fileno())
    replace_atomically(path, write)
    return path


def _read(path: str) -> Optional[MountRecord]:
    try:
        with open(path, encoding="utf-8") as f:
            return MountRecord.from_json(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return None  # damaged: stale by definition


def _valid(rec: Optional[MountRecord], devs: dict[str, str]) -> TypeGuard[MountRecord]:
    return rec is not None and bool(rec.dev) and devs.get(rec.mountpoint) == rec.dev


def _drop(path: str) -> None:
    """Remove a record, and the control socket beside it (a daemon killed outright leaves
    its socket behind)."""
    for p in (path, path[:-len(".json")] + ".sock" if path.endswith(".json") else None):
        if p is None:
            continue
        try:
            os.unlink(p)
        except OSError:
            pass


LEFTOVER_AGE = 60.0  # seconds: a temporary file older than this was left by a killed writer


def get(mountpoint: str) -> Optional[MountRecord]:
    """The record of the mount at `mountpoint`, or None (none, or stale: then removed)."""
    path = _file(mountpoint)
    rec = _read(path)
    if rec is None:
        if os.path.exists(path):
            _drop(path)
        return None
    if rec.mountpoint != mountpoint or not _valid(rec, mounted_devs()):
        _drop(path)
        return None
    return rec


def remove(mountpoint: str, dev: Optional[str] = None) -> None:
    """Forget the record of `mountpoint` (only if it names superblock `dev`, when given:
    a daemon exiting must not remove the record of a newer mount at the same place)."""
    path = _file(mountpoint)
    if dev is not None:
        rec = _read(path)
        if rec is not None and rec.dev != dev:
            return
    _drop(path)


def all() -> list[MountRecord]:  # noqa: A001 (the registry's API: registry.all())
    """Every valid record, by mount point; stale ones are removed."""
    try:
        names = sorted(os.listdir(REGISTRY_DIR))
    except OSError:
        return []
    devs = mounted_devs()
    out = []
    now_ = time.time()
    for name in names:
        path = os.path.join(REGISTRY_DIR, name)
        # Left behind by a killed daemon or writer: a socket with no record (a starting
        # daemon binds its socket just before it records the mount, so only old ones), or
        # an old temporary file.
        if name.endswith(".tmp") or (name.endswith(".sock")
                                     and name[:-len(".sock")] + ".json" not in names):
            try:
                if now_ - os.lstat(path).st_mtime > LEFTOVER_AGE:
                    _drop(path)
            except OSError:
                pass
            continue
        if not name.endswith(".json"):
            continue
        rec = _read(path)
        if _valid(rec, devs) and _file(rec.mountpoint) == path:
            out.append(rec)
        else:
            _drop(path)
    return sorted(out, key=lambda r: r.mountpoint)
