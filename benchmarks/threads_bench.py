"""More than one request in flight: `fpol mount --threads N` under parallel clients.

    sudo python3 benchmarks/threads_bench.py [--seconds 3] [--clients 2] [--threads 1,2,4]

For each thread count, one mount (--cache off, so every operation reaches the daemon) of a
tree of 2,000 files of 4 KiB in 20 directories; CLIENTS processes each run open + read 4 KiB
+ close, then stat, over the files for SECONDS; the figure is the total rate. Rounds
alternate the thread counts so drift on a shared machine hits all of them. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICY = "policy threads\ndeny write under /readonly with EROFS\naudit read under /logged\n"


def _client(root: str, what: str, seconds: float, k: int, out) -> None:
    files = [f"{root}/d{d}/f{f}" for d in range(20) for f in range(100)]
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        path = files[(n * 7 + k * 13) % len(files)]
        if what == "open+read+close":
            fd = os.open(path, os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)
        else:
            os.stat(path)
        n += 1
    out.put(n)


def rate(root: str, what: str, clients: int, seconds: float) -> float:
    q = mp.Queue()
    procs = [mp.Process(target=_client, args=(root, what, seconds, k, q)) for k in range(clients)]
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    base = tempfile.mkdtemp(prefix="fpol-threads-")
    src, mnt, policy = f"{base}/src", f"{base}/mnt", f"{base}/p.fpol"
    try:
        for d in range(20):
            os.makedirs(f"{src}/d{d}")
            for f in range(100):
                with open(f"{src}/d{d}/f{f}", "wb") as fh:
                    fh.write(b"x" * 4096)
        os.mkdir(mnt)
        with open(policy, "w") as fh:
            fh.write(POLICY)
        results: dict[tuple[int, str], list[float]] = {}
        fpol = [sys.executable, "-m", "fpol"]
        for _ in range(args.rounds):
            for t in counts:
                subprocess.run(fpol + ["mount", policy, src, mnt, "--cache", "off", "--threads",
                                       str(t), "--log", f"{base}/log"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
                try:
                    rate(mnt, "stat", args.clients, 0.5)  # warm the daemon's node table
                    for what in ("open+read+close", "stat"):
                        results.setdefault((t, what), []).append(
                            rate(mnt, what, args.clients, args.seconds))
                finally:
                    subprocess.run(fpol + ["umount", mnt], check=True, cwd=ROOT,
                                   stdout=subprocess.DEVNULL)
        print(f"| threads | open+read+close/s ({args.clients} clients) | stat/s ({args.clients} clients) |")
        print("|---|---|---|")
        for t in counts:
            cells = [f"{sorted(results[t, w])[len(results[t, w]) // 2]:,.0f}"
                     for w in ("open+read+close", "stat")]
            print(f"| {t} | {cells[0]} | {cells[1]} |")
        print(f"\n{args.rounds} rounds, the median of each; load average "
              f"{os.getloadavg()[0]:.1f} at the end; `--cache off`.")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
