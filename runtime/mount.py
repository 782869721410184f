"""`fpol mount` / `fpol umount`: enforce a policy on a FUSE mount of a backing directory.

mount: check the policy, open /dev/fuse, mount(2) a `fuse.fpol` filesystem over
MOUNTPOINT, answer INIT, then (unless --foreground) fork into the background and print the
daemon's pid. The daemon serves until the filesystem is unmounted (`fpol umount`, umount(8),
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
from typing import Optional, TextIO

EXIT_OK, EXIT_POLICY, EXIT_USAGE, EXIT_ENV = 0, 1, 2, 3
FSTYPE = "fuse.fpol"


class MountError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --- what is mounted where ---------------------------------------------------------------

@dataclass(frozen=True)
class MountEntry:
    target: str
    fstype: str
    source: str
    options: str = ""  # the superblock options (fuse-bpf mounts carry root_bpf= there)


def _unescape(field: str) -> str:
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


def mount_entry(path: str) -> Optional[MountEntry]:
    """The topmost mount whose mount point is `path` (an absolute, resolved path), if any."""
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 2 and _unescape(fields[4]) == path:
                found = MountEntry(path, tail[0], _unescape(tail[1]),
                                   tail[2] if len(tail) > 2 else "")
    return found


def mount_state(path: str) -> tuple[str, Optional[MountEntry]]:
    """("none" | "live" | "dead", entry). Dead: a FUSE mount whose daemon is gone."""
    entry = mount_entry(path)
    if entry is None:
        return "none", None
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
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
    if os.geteuid() != 0:
        raise MountError(EXIT_ENV, "must run as root: mount(2) and FUSE passthrough need "
                                   "CAP_SYS_ADMIN")
    if not os.path.exists("/dev/fuse"):
        raise MountError(EXIT_ENV, "no /dev/fuse on this machine (load the fuse module, or "
                                   "give the container the device)")
    if not os.path.isdir(source):
        raise MountError(EXIT_USAGE, f"source {source} is not a directory")
    state, entry = mount_state(mountpoint)
    if state == "dead":
        from . import libc

        libc.umount2(mountpoint, libc.MNT_DETACH)
        print(f"fpol mount: cleared a dead mount at {mountpoint} (its daemon had exited)",
              file=err)
    elif state == "live" and entry.fstype == FSTYPE:
        raise MountError(EXIT_USAGE, f"{mountpoint} is already an fpol mount (of "
                                     f"{entry.source}); run `fpol umount {mountpoint}` first")
    if not os.path.isdir(mountpoint):
        raise MountError(EXIT_USAGE, f"mountpoint {mountpoint} is not a directory")


def mount(policy_path: str, source: str, mountpoint: str, foreground: bool = False,
          audit: Optional[str] = None, handler: Optional[str] = None,
          passthrough: bool = True, out: TextIO = None, err: TextIO = None,
          mode: str = "auto") -> int:
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
                                      handler, abi, out, err)
            if mode == "fuse-bpf":
                raise MountError(EXIT_ENV, "this kernel has no struct fuse_ops (fuse-bpf is not "
                                           "in mainline Linux); use --mode daemon (the default "
                                           "here) to enforce the policy in the daemon")
        return _mount(policy_path, source, mountpoint, foreground, audit, handler,
                      passthrough, out, err)
    except MountError as e:
        print(f"fpol mount: {e.message}", file=err)
        return e.code


def _mount_fusebpf(policy_path, source, mountpoint, foreground, audit, handler_spec, abi,
                   out: TextIO, err: TextIO) -> int:
    """fuse-bpf: attach the policy's instances (or reuse them), mount with root_dir and
    root_bpf, and run a daemon only if the policy sends anything to userspace (spec §8)."""
    from . import libbpf, libc, loader
    from .fuse import fusebpf
    from .fuse.bpfserver import FuseBpfServer
    from .fuse.device import Channel
    from .fuse.enforce import AuditLog, Enforcer, HandlerError, load_handler
    from .objects import build

    checked = _check_policy(policy_path, err)
    source, mountpoint = _resolve(source), _resolve(mountpoint)
    _preflight(source, mountpoint, err)
    p = checked.policy
    if not any(l.policy == p.name for l in loader.status()):
        try:
            loader.load(build(checked, "struct_ops", abi=abi).path, p.name)
        except (loader.LoadRefused, libbpf.LibbpfError) as e:
            raise MountError(EXIT_ENV, f"cannot load the policy's fuse_ops instances: {e}") from None
    root_bpf = f"{p.name}_0"
    root_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    channel = None
    if p.needs_daemon:
        try:
            channel = Channel.open()
        except OSError as e:
            os.close(root_fd)
            raise MountError(EXIT_ENV, f"cannot open /dev/fuse: {e.strerror}") from None
    options = fusebpf.mount_options(root_fd, root_bpf, channel.fd if channel else None,
                                    no_daemon=not p.needs_daemon,
                                    uid=os.getuid(), gid=os.getgid())
    try:
        libc.mount(source, mountpoint, FSTYPE, libc.MS_NOSUID | libc.MS_NODEV, options)
    except OSError as e:
        if channel:
            channel.close()
        os.close(root_fd)
        raise MountError(EXIT_ENV, f"mount({mountpoint}) with root_bpf={root_bpf} failed: "
                                   f"{e.strerror}") from None
    os.close(root_fd)  # the kernel holds the backing root now
    summary = (f"fpol mount: {source} on {mountpoint}, policy {p.name} enforced by fuse-bpf "
               f"({abi}, {len(checked.classes.classes)} instances, root_bpf={root_bpf})")
    if channel is None:
        print(summary + "; no daemon (the policy sends nothing to userspace)", file=err, flush=True)
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
                           enforcer, lambda cls: f"{p.name}_{cls}")
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
            print(pid, file=out, flush=True)
            return EXIT_OK
        os._exit(_daemon(server, mountpoint, err))
    return _serve(server, mountpoint, err)


def _mount(policy_path, source, mountpoint, foreground, audit, handler_spec, passthrough,
           out: TextIO, err: TextIO) -> int:
    from . import libc
    from .fuse.device import Channel
    from .fuse.enforce import AuditLog, Enforcer, HandlerError, load_handler
    from .fuse.server import FuseServer

    checked = _check_policy(policy_path, err)
    source, mountpoint = _resolve(source), _resolve(mountpoint)
    _preflight(source, mountpoint, err)
    try:
        handler = load_handler(handler_spec) if handler_spec else None
    except HandlerError as e:
        raise MountError(EXIT_USAGE, str(e)) from None
    try:
        audit_stream = open(audit, "a", encoding="utf-8") if audit else err
    except OSError as e:
        raise MountError(EXIT_USAGE, f"cannot open audit file {audit}: {e.strerror}") from None
    enforcer = Enforcer(checked.classes, AuditLog(audit_stream, checked.policy), handler,
                        handler_spec or "default")
    root_fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        channel = Channel.open()
    except OSError as e:
        raise MountError(EXIT_ENV, f"cannot open /dev/fuse: {e.strerror}") from None
    options = f"fd={channel.fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()}"
    try:
        libc.mount(source, mountpoint, FSTYPE, libc.MS_NOSUID | libc.MS_NODEV, options)
    except OSError as e:
        channel.close()
        raise MountError(EXIT_ENV, f"mount({mountpoint}) failed: {e.strerror}") from None
    server = FuseServer(channel, root_fd, enforcer, passthrough=passthrough)
    try:
        negotiated = server.handshake()
    except BaseException as e:
        channel.close()  # aborts the connection, so the unmount cannot hang on it
        try:
            _detach(mountpoint)
        except OSError:
            pass
        raise MountError(EXIT_ENV, f"FUSE handshake failed, unmounted again: {e}") from None
    p = checked.policy
    print(f"fpol mount: {source} on {mountpoint}, policy {p.name} ({len(p.rules)} rules, "
          f"{len(checked.classes.classes)} classes, mode {p.mode}); FUSE "
          f"{negotiated.major}.{negotiated.minor}; passthrough {negotiated.note}", file=err,
          flush=True)
    if not foreground:
        pid = os.fork()
        if pid:
            channel.close()
            os.close(root_fd)
            print(pid, file=out, flush=True)
            return EXIT_OK
        os._exit(_daemon(server, mountpoint, err))  # the daemon never returns to the caller
    return _serve(server, mountpoint, err)


def _daemon(server, mountpoint: str, err: TextIO) -> int:
    try:
        os.setsid()
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)  # so `pid=$(fpol mount ...)` returns: the pipe must close
        os.close(null)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return _serve(server, mountpoint, err)
    except BaseException:
        try:
            import traceback

            print(f"fpol mount: daemon for {mountpoint} failed:\n{traceback.format_exc()}",
                  file=err, flush=True)
        except (OSError, ValueError):
            pass
        return 1


def _serve(server, mountpoint: str, err: TextIO) -> int:
    os.umask(0)  # the kernel already applied the caller's umask to every mode it sends
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # one O_PATH descriptor per looked-up node
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def stop(signum, frame):
        try:
            _detach(mountpoint)
        except OSError:
            pass  # already gone: the read loop ends with ENODEV

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve()
    try:
        print(f"fpol mount: {mountpoint} unmounted; {server.summary()}", file=err, flush=True)
    except (OSError, ValueError):
        pass
    return EXIT_OK


# --- umount -------------------------------------------------------------------------------

def umount(mountpoint: str, err: TextIO = None) -> int:
    err = err or sys.stderr
    from . import libc

    path = _resolve(mountpoint)
    state, entry = mount_state(path)
    if state == "none":
        print(f"fpol umount: {mountpoint} is not a mount point", file=err)
        return EXIT_USAGE
    if not entry.fstype.startswith("fuse"):
        print(f"fpol umount: {mountpoint} is a {entry.fstype} mount, not FUSE; not touching it",
              file=err)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("fpol umount: must run as root", file=err)
        return EXIT_ENV
    try:
        if state == "dead":
            libc.umount2(path, libc.MNT_DETACH)
            print(f"fpol umount: removed the dead mount at {path}", file=err)
        else:
            how = _detach(path)
            if how != "unmounted":
                print(f"fpol umount: {path} {how}", file=err)
    except OSError as e:
        print(f"fpol umount: {path}: {e.strerror}", file=err)
        return EXIT_ENV
    _unload_if_unused(entry, err)
    return EXIT_OK


def _unload_if_unused(entry, err: TextIO) -> None:
    """A fuse-bpf mount's policy stays loaded while another mount still names it."""
    policy = _root_bpf_policy(entry.options)
    if policy is None:
        return
    try:
        with open("/proc/self/mountinfo") as f:
            still = any(_root_bpf_policy(line.partition(" - ")[2].split()[-1]) == policy
                        for line in f if " - " in line)
    except OSError:
        return
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
    p.add_argument("--mode", choices=("auto", "daemon", "fuse-bpf"), default="auto",
                   help="who enforces: fuse-bpf (the policy's programs, on kernels with "
                        "struct fuse_ops), daemon (any kernel with FUSE), or auto (fuse-bpf "
                        "where the kernel has it; the default)")


def add_umount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT",
                   help="an fpol mount; a dead one (daemon gone) is removed too")


def run_mount_command(args) -> int:
    return mount(args.policy, args.source, args.mountpoint, args.foreground, args.audit,
                 args.handler, getattr(args, "passthrough", True),
                 mode=getattr(args, "mode", "auto"))


def run_umount_command(args) -> int:
    return umount(args.mountpoint)


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
