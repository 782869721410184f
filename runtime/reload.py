"""`fpol reload MOUNTPOINT POLICY`: swap the policy of a live daemon mount, no remount.

The daemon listens on a control socket beside its mount record (runtime/registry.py),
`/run/fpol/mounts/<key>.sock`, mode 0600: only root may reload. A reload is one JSON line
each way:

    {"op": "reload", "policy": "/abs/path.fpol"}
    {"ok": true, "message": "...", "sha256": "...", "classes": N}

The command checks the policy first and prints its diagnostics; a policy with errors is
refused (exit 1) before the daemon is asked, and the daemon checks what it reads again (the
file may change in between), refusing it the same way. The old policy then stays.

In the daemon, a control thread compiles the new policy into a PolicyView while requests
go on being served, then takes the server's lock, which is held while a request is decided
and performed: each request is decided wholly by the old policy or wholly by the new one.
The swap classifies every known node again and drops all the kernel caches at once
(FuseServer.swap). Descriptors opened before keep their open-time decision
(docs/security.md).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from typing import Callable, Optional, TextIO

from fpol.compiler.errors import EXIT_ENV, EXIT_OK, EXIT_POLICY, EXIT_USAGE
MAX_MESSAGE = 1 << 16
TIMEOUT = 120.0  # a 10,000-rule policy compiles in seconds; this is only a safety net


def socket_path(mountpoint: str) -> str:
    from . import registry

    return registry.record_file(mountpoint)[:-len(".json")] + ".sock"


# --- the daemon's side -----------------------------------------------------------------------

class ControlServer:
    """Accepts reload requests for one mount, one at a time, in a thread of its own."""

    def __init__(self, mountpoint: str, reload: Callable[[str], dict],
                 log: Callable[[str], None]):
        self.mountpoint = mountpoint
        self.path = socket_path(mountpoint)
        self.reload = reload
        self.log = log
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        try:
            os.unlink(self.path)  # left by a daemon that was killed
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # bound 0600 from the start: no window for other users
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        self.sock.listen(4)

    def start(self) -> None:
        threading.Thread(target=self._serve, name="fpol-control", daemon=True).start()

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed: the daemon is stopping
            with conn:
                try:
                    conn.settimeout(TIMEOUT)
                    answer = self._answer(_read_line(conn))
                except (OSError, ValueError) as e:
                    answer = {"ok": False, "message": f"bad control request: {e}"}
                try:
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                except OSError:
                    pass

    def _answer(self, request: dict) -> dict:
        if request.get("op") != "reload" or not isinstance(request.get("policy"), str):
            return {"ok": False, "message": "unknown control request"}
        try:
            return self.reload(request["policy"])
        except Exception as e:  # a bug must not end the control thread
            self.log(f"reload of {request['policy']} failed: {type(e).__name__}: {e}; "
                     "the old policy stays")
            return {"ok": False, "message": f"reload failed: {type(e).__name__}: {e}; the "
                                            "old policy stays"}


def _read_line(conn: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise ValueError("request too long")
    value = json.loads(data.decode("utf-8", "surrogateescape") or "null")
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def reloader(server, mountpoint: str, log: Callable[[str], None]) -> Callable[[str], dict]:
    """The daemon's reload: check and compile `path`, swap it in, record it."""
    def reload(path: str) -> dict:
        from fpol.compiler.diagnostics import render_text
        from fpol.compiler.driver import check
        from fpol.compiler.view import PolicyView

        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            return {"ok": False, "message": f"cannot read {path}: {e.strerror}; the old "
                                            "policy stays"}
        checked = check(data, path)
        metrics = server.metrics
        if not checked.ok:
            if metrics is not None:
                metrics.reloads.labels("refused").inc()
            text = render_text(checked.diagnostics,
                               {checked.source.file: list(checked.source.lines)})
            return {"ok": False, "message": f"{path}: policy has errors; the old policy "
                                            "stays", "diagnostics": text}
        assert checked.classes is not None  # ok
        view = PolicyView(checked.classes, checked.digest)
        with server.lock:
            old = server.enf.view
            server.swap(view)
        if metrics is not None:
            metrics.reloads.labels("ok").inc()
            metrics.set_policy(view.name, checked.digest, os.path.abspath(path))
        _record_reload(mountpoint, checked, path)
        message = (f"{mountpoint}: policy {old.name} ({old.sha256 or '?'}) replaced by "
                   f"{view.name} ({checked.digest}, {len(view)} classes); the kernel's "
                   "caches were dropped")
        log(message)
        return {"ok": True, "message": message, "sha256": checked.digest,
                "classes": len(view)}
    return reload


def _record_reload(mountpoint: str, checked, path: str) -> None:
    from dataclasses import replace

    from . import registry

    try:
        rec = registry.get(mountpoint)
        if rec is not None:
            registry.record(replace(rec, policy=checked.policy.name,
                                    policy_path=os.path.abspath(path),
                                    policy_sha256=checked.digest, loaded_at=registry.now()))
    except OSError:
        pass  # the record is a convenience; the mount has the new policy either way


# --- the command -------------------------------------------------------------------------------

def reload(mountpoint: str, policy_path: str, out: Optional[TextIO] = None,
           err: Optional[TextIO] = None) -> int:
    from fpol.compiler.diagnostics import render_text
    from fpol.compiler.driver import check

    from . import registry
    from .mount import _resolve, mount_state

    out, err = out or sys.stdout, err or sys.stderr
    path = _resolve(mountpoint)
    state, entry = mount_state(path)
    if state != "live" or entry is None or entry.fstype != "fuse.fpol":
        print(f"fpol reload: {path} is not a live fpol mount"
              + (" (its daemon is gone: `fpol umount` it)" if state == "dead" else ""),
              file=err)
        return EXIT_USAGE
    rec = registry.get(path)
    if rec is not None and rec.mode != "daemon":
        print(f"fpol reload: {path} is enforced by fuse-bpf programs; reloading those is not "
              "supported: `fpol umount` it and mount the new policy", file=err)
        return EXIT_USAGE
    try:
        with open(policy_path, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"fpol reload: cannot read {policy_path}: {e.strerror}", file=err)
        return EXIT_USAGE
    checked = check(data, policy_path)
    if checked.diagnostics:
        print(render_text(checked.diagnostics, {checked.source.file: list(checked.source.lines)}),
              file=err)
    if not checked.ok:
        print(f"fpol reload: {policy_path}: policy has errors; the mount keeps its policy",
              file=err)
        return EXIT_POLICY
    try:
        answer = _ask(socket_path(path), {"op": "reload",
                                          "policy": os.path.abspath(policy_path)})
    except OSError as e:
        print(f"fpol reload: cannot reach the daemon of {path} ({socket_path(path)}: "
              f"{e.strerror or e}); is it a mount made by this version of fpol?", file=err)
        return EXIT_ENV
    if answer.get("diagnostics"):
        print(answer["diagnostics"], file=err)
    if not answer.get("ok"):
        print(f"fpol reload: {answer.get('message', 'refused')}", file=err)
        return EXIT_POLICY
    print(f"fpol reload: {answer.get('message')}", file=out)
    return EXIT_OK


def _ask(path: str, request: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        return _read_line(s)


def add_arguments(p) -> None:
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="a live fpol mount (daemon mode)")
    p.add_argument("policy", metavar="POLICY", help="the .fpol policy to enforce from now on")


def run_command(args) -> int:
    return reload(args.mountpoint, args.policy)


def main(argv: Optional[list] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="fpol reload")
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
