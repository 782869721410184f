"""Throughput through `fpol mount` vs the backing directory, with and without passthrough.

    sudo python3 benchmarks/mount_bench.py [--seconds 1.0] [--files 1000]

Each figure is the rate one Python process reaches in a fixed time (default 1 s) of:
stat over many files; open + read 4 KiB + close of small files; pread and pwrite of 4 KiB
blocks at successive offsets on one open descriptor of a 64 MiB file. The mount enforces a
small policy that allows everything measured. Needs root and /dev/fuse.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICY = "policy bench\ndeny write under /readonly with EROFS\naudit read under /logged\n"
BIG = 64 << 20
BLOCK = 4096


def rate(fn, seconds: float) -> float:
    """Calls per second of fn over `seconds` (checked every 64 calls)."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(64):
            fn()
        count += 64
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def measure(root: str, seconds: float, files: int) -> dict[str, float]:
    names = [os.path.join(root, "small", f"f{i}") for i in range(files)]
    out = {}
    i = [0]

    def do_stat():
        os.stat(names[i[0] % files])
        i[0] += 1
    out["stat/s"] = rate(do_stat, seconds)

    def open_read_close():
        fd = os.open(names[i[0] % files], os.O_RDONLY)
        os.read(fd, BLOCK)
        os.close(fd)
        i[0] += 1
    out["open+read4k+close/s"] = rate(open_read_close, seconds)

    fd = os.open(os.path.join(root, "big"), os.O_RDWR)
    off = [0]
    buf = os.urandom(BLOCK)

    def pread():
        os.pread(fd, BLOCK, off[0])
        off[0] = (off[0] + BLOCK) % BIG

    def pwrite():
        os.pwrite(fd, buf, off[0])
        off[0] = (off[0] + BLOCK) % BIG
    try:
        out["pread4k/s"] = rate(pread, seconds)
        off[0] = 0
        out["pwrite4k/s"] = rate(pwrite, seconds)
    finally:
        os.close(fd)
    return out


def populate(src: str, files: int) -> None:
    os.makedirs(os.path.join(src, "small"))
    block = os.urandom(BLOCK)
    for i in range(files):
        with open(os.path.join(src, "small", f"f{i}"), "wb") as f:
            f.write(block)
    with open(os.path.join(src, "big"), "wb") as f:
        for _ in range(BIG // (1 << 20)):
            f.write(os.urandom(1 << 20))


def mounted_run(policy: str, src: str, mnt: str, passthrough: bool, seconds: float,
                files: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "fpol.runtime.mount", "mount", policy, src, mnt,
           "--audit", os.devnull]
    if not passthrough:
        cmd.append("--no-passthrough")
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          check=True)
    pid = int(done.stdout.decode().strip())
    try:
        return measure(mnt, seconds, files)
    finally:
        subprocess.run([sys.executable, "-m", "fpol.runtime.mount", "umount", mnt], cwd=ROOT,
                       check=True)
        for _ in range(500):  # the daemon exits once the mount is gone
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.01)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--files", type=int, default=1000, help="small files for stat/open")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("mount_bench: needs root and /dev/fuse", file=sys.stderr)
        return 3
    work = tempfile.mkdtemp(prefix="fpol-bench-")
    try:
        src, mnt = os.path.join(work, "src"), os.path.join(work, "mnt")
        os.mkdir(mnt)
        populate(src, args.files)
        policy = os.path.join(work, "bench.fpol")
        with open(policy, "w") as f:
            f.write(POLICY)
        rows = [("backing directory (ext4)", measure(src, args.seconds, args.files)),
                ("fpol mount, passthrough", mounted_run(policy, src, mnt, True, args.seconds,
                                                        args.files)),
                ("fpol mount, daemon I/O", mounted_run(policy, src, mnt, False, args.seconds,
                                                       args.files))]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cols = list(rows[0][1])
    print(f"{'target':<28}" + "".join(f"{c:>22}" for c in cols))
    for name, figures in rows:
        print(f"{name:<28}" + "".join(f"{figures[c]:>22,.0f}" for c in cols))
    print(f"({args.seconds:g} s per figure, {args.files} files of 4 KiB, 64 MiB file, "
          f"kernel {os.uname().release}, {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
