"""`fpol mount --metrics HOST:PORT`: Prometheus metrics scraped over HTTP during a real
mount with a scripted workload; the counters match the workload and the audit log."""

from __future__ import annotations

import errno
import hashlib
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fusemount import Mount, missing

pytest.importorskip("prometheus_client", reason="prometheus_client is not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(missing() is not None, reason=f"real FUSE mounts: {missing()}")

POLICY = """policy metered
default allow
deny read under /secret with EPERM
audit read under /logged
"""
STRICTER = POLICY + "deny write under /logged\n"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, metric: str, **labels) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(tmp_path):
    policy = tmp_path / "metered.fpol"
    policy.write_text(POLICY)
    src = tmp_path / "src"
    for d in ("secret", "logged", "pub"):
        (src / d).mkdir(parents=True)
    (src / "secret" / "s.txt").write_text("s")
    (src / "logged" / "a.txt").write_text("a")
    (src / "pub" / "p.txt").write_text("p")
    m = Mount(policy, src, tmp_path / "mnt", tmp_path / "audit.log",
              extra_args=("--metrics", "127.0.0.1:0")).start()
    try:
        where = re.search(r"metrics on (http://\S+/metrics)", m.stderr())
        assert where, m.stderr()
        yield m, where.group(1), tmp_path
    finally:
        assert m.stop() == 0, m.stderr()


def test_counters_match_the_workload_and_the_audit_log(metered):
    m, url, tmp = metered
    for _ in range(5):
        assert Path(m.path("logged/a.txt")).read_text() == "a"
    for _ in range(3):
        with pytest.raises(PermissionError) as e:
            Path(m.path("secret/s.txt")).read_text()
        assert e.value.errno == errno.EPERM
    for _ in range(4):
        assert Path(m.path("pub/p.txt")).read_text() == "p"
    samples = scrape(url)
    policy_file = str(tmp / "metered.fpol")
    assert value(samples, "fpol_denials_total", rule=f"{policy_file}:3") == 3
    assert value(samples, "fpol_requests_total", op="open", decision="deny") == 3
    audited_opens = [r for r in m.audit() if r["op"] == "open" and r["path"] == "/logged/a.txt"]
    assert len(audited_opens) == 5
    # every allowed open: 5 audited + 4 plain, each counted once
    assert value(samples, "fpol_requests_total", op="open", decision="allow") == 9
    assert value(samples, "fpol_request_seconds_count", op="open") == 12
    assert value(samples, "fpol_entries_total", cacheable="yes") >= 3
    sha = hashlib.sha256(POLICY.encode()).hexdigest()
    assert value(samples, "fpol_policy_info", name="metered", sha256=sha, file=policy_file) == 1


def test_reloads_are_counted_and_the_policy_info_follows(metered):
    m, url, tmp = metered
    stricter = tmp / "stricter.fpol"
    stricter.write_text(STRICTER)
    broken = tmp / "broken.fpol"
    broken.write_text("deny wrte under /x\n")
    fpol = [sys.executable, "-m", "fpol", "reload", str(m.mnt)]
    assert subprocess.run(fpol + [str(stricter)], capture_output=True, cwd=ROOT).returncode == 0
    assert subprocess.run(fpol + [str(broken)], capture_output=True, cwd=ROOT).returncode == 1
    samples = scrape(url)
    assert value(samples, "fpol_reloads_total", result="ok") == 1
    sha = hashlib.sha256(STRICTER.encode()).hexdigest()
    assert value(samples, "fpol_policy_info", name="metered", sha256=sha,
                 file=str(stricter)) == 1
    assert value(samples, "fpol_cache_invalidations_total", kind="epoch") >= 1


def test_a_taken_port_fails_the_mount_cleanly(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        (tmp_path / "p.fpol").write_text(POLICY)
        (tmp_path / "src").mkdir()
        (tmp_path / "mnt").mkdir()
        r = subprocess.run([sys.executable, "-m", "fpol", "mount", str(tmp_path / "p.fpol"),
                            str(tmp_path / "src"), str(tmp_path / "mnt"), "--foreground",
                            "--metrics", f"127.0.0.1:{port}"], capture_output=True, text=True,
                           cwd=ROOT, timeout=30)
    assert r.returncode == 2 and "cannot listen there" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "fpol", "mount", str(tmp_path / "p.fpol"),
                        str(tmp_path / "src"), str(tmp_path / "mnt"), "--foreground",
                        "--metrics", "nonsense"], capture_output=True, text=True, cwd=ROOT,
                       timeout=30)
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
