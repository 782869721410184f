"""Prometheus metrics of a daemon mount (`fpol mount --metrics HOST:PORT`).

Served over HTTP by prometheus_client from a thread of the daemon, on a registry of the
mount's own (nothing of the process's default collectors):

- fpol_requests_total{op, decision}: FUSE requests by operation and by what the policy
  decided (allow, deny, userspace, or none for requests the policy does not judge:
  forget, release of a handle, ...).
- fpol_denials_total{rule}: refusals by the rule that made them (FILE:LINE, or `default`).
- fpol_request_seconds{op}: how long the daemon took to answer, a histogram.
- fpol_entries_total{cacheable}: lookups and READDIRPLUS entries answered, and whether the
  kernel may cache them (the daemon cannot see the kernel's cache hits themselves; every
  cacheable entry is a lookup the kernel need not repeat within the timeout).
- fpol_cache_invalidations_total{kind}: what the daemon dropped from the kernel's caches.
- fpol_policy_info{name, sha256, file}: the policy in force; fpol_reloads_total{result}.

prometheus_client is an optional dependency (`pip install fpol[metrics]`); a mount asked
for metrics without it fails to start, saying so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional
from fpol.compiler.errors import EnvironmentProblem

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer


class MetricsUnavailable(EnvironmentProblem):
    pass


class Metrics:
    def __init__(self) -> None:
        try:
            import prometheus_client as pc
        except ImportError:
            raise MetricsUnavailable("--metrics needs prometheus_client (pip install "
                                     "'fpol[metrics]')") from None
        self._pc = pc
        self.registry = pc.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = pc.Counter("fpol_requests", "FUSE requests by op and policy decision",
                                   ["op", "decision"], registry=r)
        self.denials = pc.Counter("fpol_denials", "Requests refused, by the deciding rule",
                                  ["rule"], registry=r)
        self.latency = pc.Histogram("fpol_request_seconds", "Time to answer a FUSE request",
                                    ["op"], registry=r,
                                    buckets=(1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3,
                                             2.5e-3, 1e-2, 0.1, 1.0))
        self.entries = pc.Counter("fpol_entries", "Entries handed to the kernel, by whether it "
                                  "may cache them", ["cacheable"], registry=r)
        self.invalidations = pc.Counter("fpol_cache_invalidations", "What the daemon dropped "
                                        "from the kernel's caches", ["kind"], registry=r)
        self.policy = pc.Info("fpol_policy", "The policy in force", registry=r)
        self.reloads = pc.Counter("fpol_reloads", "Policy reloads by result", ["result"],
                                  registry=r)
        self._server: Optional[WSGIServer] = None

    def bind(self, address: str) -> tuple[str, int]:
        """Bind the HTTP endpoint on HOST:PORT (port 0: any free port) and return where,
        without serving yet: the mount binds before it daemonises (a taken port fails the
        start, with a message), and the daemon serves (`start`) after the fork."""
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args) -> None:  # no line per scrape in the daemon's log
                pass

        host, port = parse_address(address)
        self._server = make_server(host, port, make_wsgi_app(self.registry),
                                   ThreadingWSGIServer, handler_class=Quiet)
        return host, self._server.server_address[1]

    def start(self) -> None:
        import threading

        if self._server is not None:
            threading.Thread(target=self._server.serve_forever, name="fpol-metrics",
                             daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.server_close()
            self._server = None

    def set_policy(self, name: str, sha256: Optional[str], file: str) -> None:
        self.policy.info({"name": name, "sha256": sha256 or "", "file": file})


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--metrics {address}: give HOST:PORT, e.g. 127.0.0.1:9464")
    return (host.strip("[]") or "127.0.0.1"), int(port)
