"""`fpol mount` / `fpol umount`: enforce a policy on a FUSE mount of a backing directory.

mount: check the policy, open /dev/fuse, mount(2) a `fuse.fpol` filesystem over
MOUNTPOINT for every user (`allow_other,default_permissions`: the kernel applies the backing
tree's ownership and modes, the policy decides on top; `--owner-only` serves root alone),
answer INIT, then (unless --foreground) fork into the background and print the daemon's
pid. The background daemon holds none of the caller's descriptors: it logs to its own file
(`--log`, default /var/log/fpol/MOUNTPOINT-NAME.log). The daemon serves until the filesystem is unmounted (`fpol umount`, umount(8),
or SIGINT/SIGTERM, which unmount it), then exits 0. A start that fails after mount(2)
unmounts again. A daemon that crashed or was killed leaves a dead mount ("Transport endpoint
is not connected"); `fpol umount` removes it, and `fpol mount` on the same mountpoint
clears it first.

Exit codes: 0 ok, 1 policy errors, 2 usage (bad paths, handler, audit file),
3 environment (not root, no /dev/fuse, mount refused).
"""

from __future__ import annotations

import argparse
import errno
import os
import resource
import signal
import sys
from dataclasses import dataclass
from typing import Optional, TextIO, cast

from fpol.compiler.errors import EXIT_ENV, EXIT_OK, EXIT_POLICY, EXIT_USAGE, FpolError

from .registry import unescape  # mountinfo's octal escapes

FSTYPE = "fuse.fpol"
LOG_DIR = "/var/log/fpol"
# Every user may use the mount; the kernel checks the backing tree's ownership and modes.
SHARED_OPTIONS = "allow_other,default_permissions"


DEFAULT_CACHE_SECONDS = 1.0  # libfuse's usual entry and attribute timeout


def cache_seconds(spec: str) -> float:
    """`--cache auto|off|SECONDS` -> the timeout for what the policy lets the kernel cache."""
    if spec == "auto":
        return DEFAULT_CACHE_SECONDS
    if spec == "off":
        return 0.0
    try:
        value = float(spec)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 3600.0:
        raise MountError(EXIT_USAGE, f"--cache {spec}: give auto, off, or a number of seconds "
                                     "from 0 to 3600; nothing mounted")
    return value


def describe_cache(seconds: float) -> str:
    return f"{seconds:g} s where the policy allows" if seconds else "off"


def default_log(mountpoint: str) -> str:
    """/var/log/fpol/<mountpoint with / as ->.log: /srv/data logs to srv-data.log."""
    name = mountpoint.strip("/").replace("-", "--").replace("/", "-") or "root"
    return os.path.join(LOG_DIR, name + ".log")


def _open_log(path: str) -> TextIO:
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, "a", encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise MountError(EXIT_USAGE, f"cannot open the daemon log {path}: {e.strerror}; "
                                     "choose another with --log; nothing mounted") from None


class MountError(FpolError):
    def __init__(self, code: int, message: str):
        super().__init__(message, exit_code=code)
        self.code = code
        self.message = message


# --- what is mounted where ---------------------------------------------------------------

@dataclass(frozen=True)
class MountEntry:
    target: str
    fstype: str
    source: str
    options: str = ""  # the superblock options (fuse-bpf mounts carry root_bpf= there)
    dev: str = ""  # major:minor of the superblock; for FUSE, minor is the connection number


def mount_entry(path: str) -> Optional[MountEntry]:
    """The topmost mount whose mount point is `path` (an absolute, resolved path), if any."""
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 2 and unescape(fields[4]) == path:
                found = MountEntry(path, tail[0], unescape(tail[1]),
                                   tail[2] if len(tail) > 2 else "", fields[2])
    return found


def fpol_mounts() -> list[tuple[str, MountEntry]]:
    """Every fpol mount in this mount namespace, with its state ("live" or "dead")."""
    targets = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and tail and tail[0] == FSTYPE:
                targets.append(unescape(fields[4]))
    out = []
    for target in dict.fromkeys(targets):
        state, entry = mount_state(target)
        if entry is not None and entry.fstype == FSTYPE:
            out.append((state, entry))
    return out


def mount_state(path: str) -> tuple[str, Optional[MountEntry]]:
    """("none" | "live" | "dead", entry). Dead: a FUSE mount whose daemon is gone."""
    entry = mount_entry(path)
    if entry is None:
        return "none", None
    try:
        # statfs always reaches the daemon (a stat may be answered from the kernel's
        # attribute cache); a dead connection fails it with ENOTCONN, or ECONNABORTED
        # when it was aborted while this very request waited (a daemon dying just now).
        os.statvfs(path)
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return "dead", entry
    return "live", entry


def _resolve(path: str) -> str:
    # realpath does not fail on a dead mount (stat gives ENOTCONN); it keeps the name.
    return os.path.realpath(os.path.abspath(path))


def _detach(path: str) -> str:
    """Unmount; if busy, detach lazily (the daemon serves until the last user is gone)."""
    from . import libc

    try:
        libc.umount2(path, 0)
        return "unmounted"
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
    libc.umount2(path, libc.MNT_DETACH)
    return "detached (busy: it disappears when the last open file is closed)"


# --- mount --------------------------------------------------------------------------------

def _check_policy(policy_path: str, err: TextIO):
    from fpol.compiler.diagnostics import render_text
    from fpol.compiler.driver import check

    try:
        with open(policy_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise MountError(EXIT_USAGE, f"cannot read {policy_path}: {e.strerror}") from None
    checked = check(data, policy_path)
    if checked.diagnostics:
        print(render_text(checked.diagnostics, {checked.source.file: list(checked.source.lines)}),
              file=err)
    if not checked.ok:
        raise MountError(EXIT_POLICY, f"{policy_path}: policy has errors; nothing mounted")
    return checked


def _preflight(source: str, mountpoint: str, err: TextIO) -> None:
    from .fuse import device

    if os.geteuid() != 0:
        raise MountError(EXIT_ENV, "must run as root: mount(2) and FUSE passthrough need "
                                   "CAP_SYS_ADMIN")
    if not os.path.exists(device.DEVICE):
        raise MountError(EXIT_ENV, f"no {device.DEVICE} on this machine: load the fuse module "
                                   "(modprobe fuse), or give the container the device "
                                   "(--device /dev/fuse); nothing mounted")
    if not os.path.isdir(source):
        what = "does not exist" if not os.path.lexists(source) else "is not a directory"
        raise MountError(EXIT_USAGE, f"source {source} {what}: it must be the backing "
                                     "directory; nothing mounted")
    state, entry = mount_state(mountpoint)
    if state == "dead":
        from . import libc

        libc.umount2(mountpoint, libc.MNT_DETACH)
        print(f"fpol mount: cleared a dead mount at {mountpoint} (its daemon had exited)",
              file=err)
    elif state == "live" and entry is not None and entry.fstype == FSTYPE:
        raise MountError(EXIT_USAGE, f"{mountpoint} is already an fpol mount (of "
                                     f"{entry.source}); run `fpol umount {mountpoint}` first")
    if not os.path.isdir(mountpoint):
        what = "does not exist" if not os.path.lexists(mountpoint) else "is not a directory"
        raise MountError(EXIT_USAGE, f"mountpoint {mountpoint} {what}; nothing mounted")


def _open_device():
    from .fuse.device import DEVICE, Channel

    try:
        return Channel.open()
    except OSError as e:
        hint = {errno.ENXIO: "the fuse module is not loaded (modprobe fuse)",
                errno.ENODEV: "the fuse module is not loaded (modprobe fuse)",
                errno.EACCES: "run as root, or give the container the device",
                errno.EPERM: "run as root, or give the container the device",
                errno.EISDIR: "it is not the FUSE character device",
                }.get(cast(int, e.errno), "check that it is the FUSE device (crw-rw-rw- 10,229)")
        raise MountError(EXIT_ENV, f"cannot open {DEVICE}: {e.strerror}; {hint}; "
                                   "nothing mounted") from None


def _mount_failed(mountpoint: str, e: OSError, extra: str = "") -> MountError:
    hint = {errno.EINVAL: "the kernel refused the FUSE mount (is the device the FUSE device, "
                          "and the kernel's FUSE recent enough?)",
            errno.ENODEV: "this kernel has no FUSE filesystem (modprobe fuse)",
            errno.EPERM: "mount(2) needs CAP_SYS_ADMIN in this mount namespace",
            errno.ENOTDIR: "the mountpoint must be a directory",
            errno.ENOENT: "the mountpoint or source disappeared",
            }.get(cast(int, e.errno), "")
    strerror = os.strerror(e.errno) if e.errno else str(e)
    return MountError(EXIT_ENV, f"mount({mountpoint}){extra} failed: {strerror}"
                                + (f"; {hint}" if hint else "") + "; nothing mounted")


def mount(policy_path: str, source: str, mountpoint: str, foreground: bool = False,
          audit: Optional[str] = None, handler: Optional[str] = None,
          passthrough: bool = True, out: Optional[TextIO] = None, err: Optional[TextIO] = None,
          mode: str = "auto", owner_only: bool = False, log: Optional[str] = None,
          cache: str = "auto", metrics: Optional[str] = None, threads: int = 1) -> int:
    """Mount and serve (see the module docstring). Returns the exit code; in background mode
    the caller gets 0 after the daemon is ready, and the daemon never returns here.

    mode: `daemon` enforces in the daemon (any kernel with FUSE); `fuse-bpf` loads the
    policy's programs and lets the kernel enforce (fuse-bpf kernels); `auto` picks fuse-bpf
    where the kernel has struct fuse_ops."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        if mode != "daemon":
            from .probe import fuse_ops_abi

            abi = fuse_ops_abi()
            if abi is not None:
                return _mount_fusebpf(policy_path, source, mountpoint, foreground, audit,
                                      handler, abi, out, err, owner_only)
            if mode == "fuse-bpf":
                raise MountError(EXIT_ENV, "this kernel has no struct fuse_ops (fuse-bpf is not "
                                           "in mainline Linux); use --mode daemon (the default "
                                           "here) to enforce the policy in the daemon")
        return _mount(policy_path, source, mountpoint, foreground, audit, handler,
                      passthrough, out, err, owner_only, log, cache_seconds(cache), metrics,
                      threads)
    except MountError as e:
        print(f"fpol mount: {e.message}", file=err)
        return e.code


def _mount_fusebpf(policy_path, source, mountpoint, foreground, audit, handler_spec, abi,
                   out: TextIO, err: TextIO, owner_only: bool = False) -> int:
    """fuse-bpf: attach the policy's instances (or reuse them), mount with root_dir and
    root_bpf, and run a daemon only if the policy sends anything to userspace (spec §8)."""
    from fpol.compiler.subjects import sends_to_daemon

    from . import libbpf, loader
    from .objects import build, instance_names
    from .probe import credentials_for_load

    checked = _check_policy(policy_path, err)
    source, mountpoint = _resolve(source), _resolve(mountpoint)
    _preflight(source, mountpoint, err)
    p = checked.policy
    # Subject conditions: decided by the programs where they can read credentials, else
    # by the daemon (probe.credentials_for_load), which then must run.
    credentials, _ = credentials_for_load(None)
    needs_daemon = p.needs_daemon or sends_to_daemon(checked.classes, credentials)
    loaded_here = False
    names: Optional[list[str]] = None
    if not any(l.policy == p.name for l in loader.status()):
        try:
            built = build(checked, "struct_ops", abi=abi, credentials=credentials)
            loader.load(built.path, p.name)
        except (loader.LoadRefused, libbpf.LibbpfError) as e:
            raise MountError(EXIT_ENV, f"cannot load the policy's fuse_ops instances: {e}") from None
        loaded_here = True
        names = [i.name for i in built.model.instances]
    try:
        # The instance the daemon attaches to a child it looks up: classes that behave
        # alike share one, named after the first of them (compiler/lower.py). Loaded
        # already: the names only, without building the object again.
        if names is None:
            names = instance_names(checked, abi, credentials)
        return _mount_fusebpf_loaded(checked, source, mountpoint, foreground, audit,
                                     handler_spec, abi, out, err, owner_only, needs_daemon,
                                     names)
    except BaseException:
        if loaded_here:  # a failed start leaves nothing behind, the instances included
            try:
                loader.unload(p.name)
            except (loader.LoadRefused, OSError):
                pass
        raise


def _mount_fusebpf_loaded(checked, source, mountpoint, foreground, audit, handler_spec, abi,
                          out: TextIO, err: TextIO, owner_only: bool = False,
                          needs_daemon: Optional[bool] = None,
                          names: Optional[list[str]] = None) -> int:
    from . import libc
    from .fuse import fusebpf
    from .fuse.bpfserver import FuseBpfServer
    from .fuse.enforce import AuditLog, Enforcer, HandlerError, load_handler

    p = checked.policy
    if needs_daemon is None:
        needs_daemon = p.needs_daemon
    root_bpf = f"{p.name}_0"
    root_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    channel = None
    if needs_daemon:
        try:
            channel = _open_device()
        except MountError:
            os.close(root_fd)
            raise
    options = fusebpf.mount_options(root_fd, root_bpf, channel.fd if channel else None,
                                    no_daemon=not needs_daemon,
                                    uid=os.getuid(), gid=os.getgid(), shared=not owner_only)
    try:
        libc.mount(source, mountpoint, FSTYPE, libc.MS_NOSUID | libc.MS_NODEV, options)
    except OSError as e:
        if channel:
            channel.close()
        os.close(root_fd)
        raise _mount_failed(mountpoint, e, f" with root_bpf={root_bpf}") from None
    os.close(root_fd)  # the kernel holds the backing root now
    dev = _dev_of(mountpoint)
    summary = (f"fpol mount: {source} on {mountpoint}, policy {p.name} enforced by fuse-bpf "
               f"({abi}, {len(checked.classes.classes)} instances, root_bpf={root_bpf})")
    if channel is None:
        print(summary + "; no daemon (the policy sends nothing to userspace)", file=err, flush=True)
        _record_mount(checked, source, mountpoint, dev, "fuse-bpf", None, err)
        return EXIT_OK
    try:
        handler = load_handler(handler_spec) if handler_spec else None
        audit_stream = open(audit, "a", encoding="utf-8") if audit else err
    except (HandlerError, OSError) as e:
        channel.close()
        _detach(mountpoint)
        raise MountError(EXIT_USAGE, str(e)) from None
    enforcer = Enforcer(checked.classes, AuditLog(audit_stream, p), handler,
                        handler_spec or "default")
    server = FuseBpfServer(channel, os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC),
                           enforcer, lambda cls: names[cls] if names else f"{p.name}_{cls}")
    try:
        server.handshake()
    except BaseException as e:
        channel.close()
        try:
            _detach(mountpoint)
        except OSError:
            pass
        raise MountError(EXIT_ENV, f"FUSE handshake failed, unmounted again: {e}") from None
    print(summary + "; the daemon serves what the programs send to userspace", file=err, flush=True)
    if not foreground:
        pid = os.fork()
        if pid:
            channel.close()
            _record_mount(checked, source, mountpoint, dev, "fuse-bpf", pid, err)
            print(pid, file=out, flush=True)
            return EXIT_OK
        os._exit(_daemon(server, mountpoint, dev, err))
    _record_mount(checked, source, mountpoint, dev, "fuse-bpf", os.getpid(), err)
    return _serve(server, mountpoint, dev, err)


def _mount(policy_path, source, mountpoint, foreground, audit, handler_spec, passthrough,
           out: TextIO, err: TextIO, owner_only: bool = False,
           log: Optional[str] = None, cache: float = 0.0,
           metrics_address: Optional[str] = None, threads: int = 1) -> int:
    from . import libc
    from .fuse.enforce import AuditLog, Enforcer, HandlerError, load_handler
    from .fuse.server import FuseServer

    checked = _check_policy(policy_path, err)
    source, mountpoint = _resolve(source), _resolve(mountpoint)
    _preflight(source, mountpoint, err)
    try:
        handler = load_handler(handler_spec) if handler_spec else None
    except HandlerError as e:
        raise MountError(EXIT_USAGE, str(e)) from None
    metrics, metrics_where = _metrics(metrics_address, checked)
    # The daemon's messages go to the caller's stderr in the foreground, to its own log
    # file in the background (or wherever --log says).
    log = log or (None if foreground else default_log(mountpoint))
    log_stream = _open_log(log) if log else err
    try:
        audit_stream = open(audit, "a", encoding="utf-8") if audit else log_stream
    except OSError as e:
        raise MountError(EXIT_USAGE, f"cannot open audit file {audit}: {e.strerror}") from None
    from fpol.compiler.view import PolicyView

    enforcer = Enforcer(PolicyView(checked.classes, checked.digest),
                        AuditLog(audit_stream, checked.policy), handler, handler_spec or "default")
    root_fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        channel = _open_device()
    except MountError:
        os.close(root_fd)
        raise
    options = f"fd={channel.fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()}"
    if not owner_only:
        options += "," + SHARED_OPTIONS
    try:
        libc.mount(source, mountpoint, FSTYPE, libc.MS_NOSUID | libc.MS_NODEV, options)
    except OSError as e:
        channel.close()
        os.close(root_fd)
        raise _mount_failed(mountpoint, e) from None
    dev = _dev_of(mountpoint)
    server = FuseServer(channel, root_fd, enforcer, passthrough=passthrough,
                        log=lambda msg: _say(log_stream, msg), cache_seconds=cache,
                        threads=threads)
    server.metrics = metrics
    try:
        negotiated = server.handshake()
    except BaseException as e:
        channel.close()  # aborts the connection, so the unmount cannot hang on it
        try:
            _detach(mountpoint)
        except OSError:
            pass
        os.close(root_fd)
        raise MountError(EXIT_ENV, f"FUSE handshake failed, unmounted again: {e}") from None
    control = _control(server, mountpoint, log_stream)
    p = checked.policy
    summary = (f"fpol mount: {source} on {mountpoint}, policy {p.name} ({len(p.rules)} rules, "
               f"{len(checked.classes.classes)} classes, mode {p.mode}); FUSE "
               f"{negotiated.major}.{negotiated.minor}; passthrough {negotiated.note}; "
               + ("owner only (root)" if owner_only else "every user, Unix permissions first")
               + f"; kernel cache {describe_cache(cache)}"
               + (f"; metrics on http://{metrics_where}/metrics" if metrics_where else ""))
    if foreground:  # recorded before it says it is ready (a test may stop it at once)
        _record_mount(checked, source, mountpoint, dev, "daemon", os.getpid(), err, log,
                      describe_cache(cache))
    print(summary + (f"; the daemon logs to {log}" if log else ""), file=err, flush=True)
    if log_stream is not err:
        print(summary, file=log_stream, flush=True)
    if not foreground:
        pid = os.fork()
        if pid:
            channel.close()
            os.close(root_fd)
            _record_mount(checked, source, mountpoint, dev, "daemon", pid, err, log,
                          describe_cache(cache))
            print(pid, file=out, flush=True)
            return EXIT_OK
        # the daemon never returns to the caller
        os._exit(_daemon(server, mountpoint, dev, log_stream, control))
    return _serve(server, mountpoint, dev, log_stream, control)


def _metrics(address: Optional[str], checked):
    """The mount's metrics, bound (not yet served) on `address`, or (None, None)."""
    if not address:
        return None, None
    from .fuse.metrics import Metrics, MetricsUnavailable

    try:
        metrics = Metrics()
        host, port = metrics.bind(address)
    except MetricsUnavailable as e:
        raise MountError(EXIT_ENV, f"{e}; nothing mounted") from None
    except ValueError as e:
        raise MountError(EXIT_USAGE, f"{e}; nothing mounted") from None
    except OSError as e:
        raise MountError(EXIT_USAGE, f"--metrics {address}: cannot listen there "
                                     f"({e.strerror}); nothing mounted") from None
    metrics.set_policy(checked.policy.name, checked.digest, os.path.abspath(checked.source.file))
    return metrics, (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


def _control(server, mountpoint: str, log_stream: TextIO):
    """The control socket `fpol reload` talks to; a mount without one still works (and
    says it cannot be reloaded)."""
    from .reload import ControlServer, reloader

    def log(msg: str) -> None:
        _say(log_stream, msg)
    try:
        return ControlServer(mountpoint, reloader(server, mountpoint, log), log)
    except OSError as e:
        log(f"no control socket ({e.strerror}): `fpol reload` cannot reach this mount")
        return None


def _dev_of(mountpoint: str) -> str:
    """The superblock (major:minor) of the mount just made at mountpoint, read from
    mountinfo (a stat would be a FUSE request, and nobody serves them yet)."""
    entry = mount_entry(mountpoint)
    return entry.dev if entry is not None and entry.fstype == FSTYPE else ""


def _ours(mountpoint: str, dev: str) -> bool:
    """Is our mount (same superblock) still attached at mountpoint?"""
    entry = mount_entry(mountpoint)
    return entry is not None and bool(dev) and entry.dev == dev


class _Terminated(BaseException):
    """SIGTERM/SIGINT after the mount was already detached: stop serving its open files.
    (BaseException: raised from the signal handler, it must not be taken for a failed
    request by the servers' `except Exception`.)"""


def _daemon(server, mountpoint: str, dev: str, err: TextIO, control=None) -> int:
    """The background daemon: a session of its own, holding none of the caller's
    descriptors (so `fpol mount ... | tail` and `pid=$(fpol mount ...)` return at once),
    its messages going to `err`, its log file."""
    try:
        os.setsid()
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err.fileno() if err.fileno() > 2 else null, 2)  # a stray write lands there
        os.close(null)
        sys.stdin = sys.stdout = open(os.devnull, "r+")
        sys.stderr = err
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return _serve(server, mountpoint, dev, err, control)
    except BaseException as e:
        _say(err, f"daemon for {mountpoint} failed: {_what_failed(e)}")
        return 1


def _say(err: TextIO, msg: str) -> None:
    try:
        print(f"fpol mount: {msg}", file=err, flush=True)
    except (OSError, ValueError):
        pass


def _what_failed(e: BaseException) -> str:
    """One line: the error, and where in fpol it was raised (for a bug report)."""
    import traceback

    where = ""
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        f = frames[-1]
        where = f" (at {os.path.basename(f.filename)}:{f.lineno} in {f.name})"
    return f"{type(e).__name__}: {e}{where}"


def _serve(server, mountpoint: str, dev: str, err: TextIO, control=None) -> int:
    """Serve until unmounted. Whatever ends the serving -- an unmount, SIGTERM, an aborted
    connection (/sys/fs/fuse/connections/N/abort), a /dev/fuse error, a bug -- the daemon
    leaves no mount behind: the connection is closed and a mount left dead by it is
    detached. Returns 0 when stopped by an unmount or a signal, 1 on an error."""
    from . import libc
    from .fuse.device import DeviceError

    os.umask(0)  # the kernel already applied the caller's umask to every mode it sends
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # one O_PATH descriptor per looked-up node
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def stop(signum, frame):
        if not dev or _ours(mountpoint, dev):
            try:
                _detach(mountpoint)  # lazily when busy: open files are served until closed
            except OSError:
                pass  # already gone: the read loop ends with ENODEV
            return
        # Already detached (an earlier signal or `fpol umount --lazy`) and still serving
        # open files: a stop request now ends them (they fail with ENOTCONN).
        raise _Terminated()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failure: Optional[BaseException] = None
    terminated = False
    if control is not None:
        control.start()
    if getattr(server, "metrics", None) is not None:
        server.metrics.start()
    from .sdnotify import notify
    notify("READY=1")  # systemd (Type=notify): mounted, and SIGTERM now unmounts cleanly
    try:
        server.serve()
    except _Terminated:
        terminated = True
    except Exception as e:  # DeviceError, or a bug: reported below, never a traceback
        failure = e
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if control is not None:
            control.close()
        server.ch.close()  # ends the connection: nothing can wait on this daemon any more
    cleared = False
    if dev and _ours(mountpoint, dev) and mount_state(mountpoint)[0] == "dead":
        # An aborted connection or a failure leaves the mount attached but dead.
        try:
            libc.umount2(mountpoint, libc.MNT_DETACH)
            cleared = True
        except OSError:
            pass
    _forget_mount(mountpoint, dev)  # the daemon is done: so is its record
    try:
        summary = server.summary()
    except Exception:
        summary = ""
    if failure is not None:
        what = str(failure) if isinstance(failure, DeviceError) else _what_failed(failure)
        _say(err, f"the daemon for {mountpoint} stopped: {what}; "
                  + ("the mount was removed" if cleared else "the mount is gone")
                  + "; the files on the source are untouched. " + summary)
        return 1
    if terminated:
        _say(err, f"{mountpoint} (already detached) stopped by a signal: files still open "
                  f"on it now fail with ENOTCONN; {summary}")
    elif cleared:
        _say(err, f"the connection of {mountpoint} was aborted; removed the dead mount; "
                  f"{summary}")
    else:
        _say(err, f"{mountpoint} unmounted; {summary}")
    return EXIT_OK


# --- umount -------------------------------------------------------------------------------

EXIT_BUSY = 1  # refused: the mount is in use (docs/cli.md, exit codes)


def mount_users(path: str) -> dict[int, tuple[str, list[str]]]:
    """Processes using anything at or under `path`: pid -> (command, ["open file /x", ...])
    from /proc (descriptors, working and root directories, executables, mappings)."""
    prefix = path.rstrip("/") + "/"

    def inside(p: str) -> bool:
        if p.endswith(" (deleted)"):
            p = p[:-len(" (deleted)")]
        return p == path or p.startswith(prefix)

    users: dict[int, tuple[str, list[str]]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid, base = int(name), f"/proc/{name}"
        uses: list[str] = []
        try:
            for what, link in (("working directory", "cwd"), ("root directory", "root"),
                               ("executable", "exe")):
                try:
                    target = os.readlink(f"{base}/{link}")
                except OSError:
                    continue
                if inside(target):
                    uses.append(f"{what} {target}")
            try:
                fds = os.listdir(f"{base}/fd")
            except OSError:
                fds = []
            for fd in fds:
                try:
                    target = os.readlink(f"{base}/fd/{fd}")
                except OSError:
                    continue
                if inside(target):
                    uses.append(f"open file {target}")
            try:
                with open(f"{base}/maps", encoding="utf-8", errors="surrogateescape") as f:
                    mapped = {line.split(None, 5)[5].rstrip("\n") for line in f
                              if len(line.split(None, 5)) == 6}
            except OSError:
                mapped = set()
            uses.extend(f"mapping {m}" for m in sorted(mapped) if inside(m))
            if uses:
                try:
                    with open(f"{base}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                users[pid] = (comm, list(dict.fromkeys(uses)))
        except OSError:
            continue  # the process went away while we looked
    return users


def describe_users(users: dict[int, tuple[str, list[str]]], limit: int = 8) -> str:
    if not users:
        return "no process found using it (a mount under it, or a process in another mount " \
               "namespace?)"
    parts = []
    for pid in sorted(users)[:limit]:
        comm, uses = users[pid]
        shown = ", ".join(uses[:3]) + (f", and {len(uses) - 3} more" if len(uses) > 3 else "")
        parts.append(f"pid {pid} ({comm}: {shown})")
    more = len(users) - limit
    return "; ".join(parts) + (f"; and {more} more processes" if more > 0 else "")


def umount(mountpoint: str, err: Optional[TextIO] = None, lazy: bool = False) -> int:
    """Unmount an fpol mount. A busy one is refused (exit 1, naming what uses it) unless
    `lazy`: then it is detached at once, its open files keep working, and its daemon exits
    when the last is closed. A dead one (its daemon gone) is removed."""
    err = err or sys.stderr
    from . import libc

    path = _resolve(mountpoint)
    state, entry = mount_state(path)
    if state == "none":
        print(f"fpol umount: {mountpoint} is not a mount point", file=err)
        return EXIT_USAGE
    assert entry is not None  # live or dead
    if not entry.fstype.startswith("fuse"):
        print(f"fpol umount: {mountpoint} is a {entry.fstype} mount, not FUSE; not touching it",
              file=err)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("fpol umount: must run as root", file=err)
        return EXIT_ENV
    rec = _registry_record(path)  # read while the mount is there: after, it is stale
    try:
        if state == "dead":
            libc.umount2(path, libc.MNT_DETACH)
            print(f"fpol umount: removed the dead mount at {path} (its daemon had exited; "
                  "the files on the source are untouched)", file=err)
        else:
            try:
                libc.umount2(path, 0)
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                users = describe_users(mount_users(path))
                if not lazy:
                    print(f"fpol umount: {path} is busy, not unmounted: {users}. Close those "
                          f"files, or `fpol umount --lazy {mountpoint}` to detach it now "
                          "(open files keep working until closed, then the daemon exits)",
                          file=err)
                    return EXIT_BUSY
                libc.umount2(path, libc.MNT_DETACH)
                _forget_mount(path, entry.dev)
                policy = _policy_of(entry, rec)
                print(f"fpol umount: {path} detached while in use ({users}); the daemon serves "
                      "those open files and exits when the last is closed"
                      + (f"; policy {policy} stays loaded (`fpol unload {policy}` once they "
                         "are closed)" if policy else ""), file=err)
                return EXIT_OK
    except OSError as e:
        print(f"fpol umount: {path}: {e.strerror}", file=err)
        return EXIT_ENV
    _forget_mount(path, entry.dev)
    _unload_if_unused(entry, err, rec)
    return EXIT_OK


def _unload_if_unused(entry, err: TextIO, rec=None) -> None:
    """A fuse-bpf mount's policy stays loaded while another mount still uses it. Which
    policy a mount uses comes from root_bpf= in mountinfo where the kernel prints it, else
    from fpol's mount registry (the RFC kernel does not print it)."""
    from . import registry

    policy = _policy_of(entry, rec)
    if policy is None:
        return
    try:
        with open(registry.MOUNTINFO) as f:
            still = any(_root_bpf_policy(line.partition(" - ")[2].split()[-1]) == policy
                        for line in f if " - " in line)
    except OSError:
        return
    still = still or any(r.policy == policy and r.mode == "fuse-bpf" for r in registry.all())
    if still:
        return
    from . import loader

    try:
        loader.unload(policy)
        print(f"fpol umount: unloaded policy {policy}", file=err)
    except loader.LoadRefused:
        pass


def _root_bpf_policy(options: str) -> Optional[str]:
    for opt in options.split(","):
        if opt.startswith("root_bpf="):
            return opt[len("root_bpf="):].rsplit("_", 1)[0]
    return None


def _policy_of(entry, rec) -> Optional[str]:
    """The loaded policy a fuse-bpf mount uses: root_bpf= if mountinfo shows it, else the
    mount registry's record; None for a daemon mount (it loads nothing)."""
    policy = _root_bpf_policy(entry.options)
    if policy is None and rec is not None and rec.mode == "fuse-bpf":
        policy = rec.policy
    return policy


# --- the mount registry (runtime/registry.py) ---------------------------------------------

def _record_mount(checked, source: str, mountpoint: str, dev: str, mode: str,
                  pid: Optional[int], err: TextIO, log: Optional[str] = None,
                  cache: str = "off") -> None:
    """Record a mount just made. A registry that cannot be written costs `fpol umount`
    its knowledge of the policy, not the mount: say so and go on."""
    from . import registry

    try:
        registry.record(registry.MountRecord(
            mountpoint=mountpoint, dev=dev, source=source, policy=checked.policy.name,
            policy_path=os.path.abspath(checked.source.file), policy_sha256=checked.digest,
            mode=mode, pid=pid, loaded_at=registry.now(),
            log=os.path.abspath(log) if log else None, cache=cache))
    except OSError as e:
        _say(err, f"cannot record the mount in {registry.REGISTRY_DIR}: {e.strerror}; "
                  "`fpol status` will not name its policy")


def _registry_record(mountpoint: str):
    from . import registry

    try:
        return registry.get(mountpoint)
    except OSError:
        return None


def _forget_mount(mountpoint: str, dev: str) -> None:
    from . import registry

    try:
        registry.remove(mountpoint, dev or None)
    except OSError:
        pass


# --- command line -------------------------------------------------------------------------

def add_mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("policy", metavar="POLICY", help="the .fpol policy to enforce")
    p.add_argument("source", metavar="SOURCE", help="the backing directory")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="where to mount it")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="serve in this process until unmounted (default: daemonise once the "
                        "mount is ready and print the daemon's pid)")
    p.add_argument("--audit", metavar="FILE",
                   help="append audit events as JSON lines to FILE (default: standard error)")
    p.add_argument("--handler", metavar="MODULE:FUNC",
                   help="a Python callable for requests the policy redirects to userspace: "
                        "gets an event dict, returns None to perform the op or an errno "
                        "(number or name) to refuse it; MODULE may be a path to a .py file")
    p.add_argument("--no-passthrough", dest="passthrough", action="store_false",
                   help="serve all reads and writes in the daemon (no FUSE passthrough)")
    p.add_argument("--owner-only", action="store_true",
                   help="serve root (the mounting user) alone (default: "
                        "every user, the backing tree's ownership and modes applied first)")
    p.add_argument("--cache", metavar="auto|off|SECONDS", default="auto",
                   help="how long the kernel may keep entries and attributes the policy "
                        "proves safe to cache (plain-allow lookup and getattr): auto "
                        f"({DEFAULT_CACHE_SECONDS:g} s, the default), off, or seconds. Changes "
                        "made to SOURCE outside the mount show within that time")
    p.add_argument("--threads", type=int, default=1, choices=range(1, 17), metavar="N",
                   help="threads reading requests (FUSE_DEV_IOC_CLONE); requests are still "
                        "decided one at a time. Default 1: benchmarks/REPORT.md measured no "
                        "gain from more on this daemon")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics there (requests by op and decision, "
                        "denials by rule, latency, reloads; needs prometheus_client). Use a "
                        "loopback address such as 127.0.0.1:9464 unless it must be reached "
                        "from elsewhere")
    p.add_argument("--log", metavar="FILE",
                   help="where the daemon writes its messages, and audit events without "
                        "--audit (default: standard error in the foreground, "
                        f"{LOG_DIR}/MOUNTPOINT-NAME.log in the background)")
    p.add_argument("--mode", choices=("auto", "daemon", "fuse-bpf"), default="auto",
                   help="who enforces: fuse-bpf (the policy's programs, on kernels with "
                        "struct fuse_ops), daemon (any kernel with FUSE), or auto (fuse-bpf "
                        "where the kernel has it; the default)")


def add_umount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT",
                   help="an fpol mount; a dead one (daemon gone) is removed too")
    p.add_argument("-l", "--lazy", action="store_true",
                   help="if the mount is busy, detach it now: files open on it keep working "
                        "until closed, then the daemon exits (default: refuse, naming the "
                        "processes that use it)")


def run_mount_command(args) -> int:
    return mount(args.policy, args.source, args.mountpoint, args.foreground, args.audit,
                 args.handler, getattr(args, "passthrough", True),
                 mode=getattr(args, "mode", "auto"),
                 owner_only=getattr(args, "owner_only", False), log=getattr(args, "log", None),
                 cache=getattr(args, "cache", "auto"), metrics=getattr(args, "metrics", None),
                 threads=getattr(args, "threads", 1))


def run_umount_command(args) -> int:
    return umount(args.mountpoint, lazy=getattr(args, "lazy", False))


def main(argv=None) -> int:
    """`python3 -m fpol.runtime.mount mount|umount ...` (the same as `fpol mount|umount`)."""
    parser = argparse.ArgumentParser(prog="fpol")
    sub = parser.add_subparsers(dest="command", required=True)
    add_mount_arguments(sub.add_parser("mount", help="enforce a policy on a FUSE mount"))
    add_umount_arguments(sub.add_parser("umount", help="unmount an fpol mount"))
    args = parser.parse_args(argv)
    return run_mount_command(args) if args.command == "mount" else run_umount_command(args)


if __name__ == "__main__":
    sys.exit(main())
