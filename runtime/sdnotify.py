"""sd_notify(3) without libsystemd: tell the service manager how the daemon is doing.

systemd starts a `Type=notify` service with $NOTIFY_SOCKET naming a datagram socket (a
path, or an abstract socket when it starts with `@`); the service sends it newline-separated
`KEY=VALUE` lines, such as `READY=1` once it serves. Without $NOTIFY_SOCKET (not started by
systemd, or another Type) nothing is sent.
"""

from __future__ import annotations

import os
import socket
from typing import Optional


def notify(state: str, environ: Optional[dict] = None) -> bool:
    """Send `state` (e.g. "READY=1") to $NOTIFY_SOCKET. True if it was sent; False when there
    is no socket to tell or it cannot be reached (a daemon never fails for that)."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # abstract namespace: a leading NUL byte
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True
