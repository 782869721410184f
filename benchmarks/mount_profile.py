"""Where the `fpol mount` daemon spends its time, per FUSE request type.

    sudo python3 benchmarks/mount_profile.py [--seconds 3] [--cache auto,off] [--keep DIR]

For each workload of benchmarks/mount_bench.py that the daemon serves per request (stat,
tree walk with lstat, open + read 4 KiB + close, create + write 4 KiB + close) and each cache
mode, a fresh mount with a foreground daemon (`python3 -m fpol.runtime.mount mount ...
--foreground`) is driven for --seconds, twice:

1. plain: the daemon's CPU time (user and system, /proc/PID/stat) over the workload, and the
   requests it served by type (the count it logs when unmounted): CPU µs per request without
   any profiler;
2. under cProfile (`python3 -m cProfile -o ... -m fpol.runtime.mount ...`): per request
   handler, calls and µs per call (inflated by the profiler: the plain run's figure is the
   true scale), and the handler's costliest callees two levels down.

Prints Markdown (benchmarks/PROFILE.md holds a run with its reading). Every mount is
unmounted at the end, also on failure. Needs root and /dev/fuse.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mount_bench as mb  # noqa: E402

WORKLOADS = [("stat", "stat"), ("walk", "tree walk with lstat"),
             ("open_read", "open + read 4 KiB + close"),
             ("create", "create + write 4 KiB + close"),
             ("rename", "rename (3,000 files at most)"), ("unlink", "unlink (3,000 files at most)"),
             ("job", "the real job's extraction (`tar -xf` of 3,000 files)")]
JOB_FILES = 3000
MOVE_FILES = 3000  # made on the backing directory before mounting, for rename and unlink
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_CREATES = 50_000


def run_workload(key: str, mnt: str, seconds: float, tarball: str) -> int:
    """Drive one workload for `seconds`; the operations done (entries, for the walk; files
    extracted, for the job, which runs once whatever `seconds` says)."""
    if key == "job":
        os.mkdir(os.path.join(mnt, "job"))
        subprocess.run(["tar", "-xf", tarball, "-C", os.path.join(mnt, "job")], check=True)
        return JOB_FILES
    names = mb.tree_names(mnt)
    done, start = 0, time.perf_counter()
    if key in ("rename", "unlink"):
        scratch = os.path.join(mnt, "scratch")
        while done < MOVE_FILES and time.perf_counter() - start < seconds:
            old = os.path.join(scratch, f"m{done}")
            if key == "rename":
                os.rename(old, os.path.join(scratch, f"n{done}"))
            else:
                os.unlink(old)
            done += 1
        return done
    block = os.urandom(mb.BLOCK)
    scratch = os.path.join(mnt, "scratch")
    if key == "create":
        os.mkdir(scratch)
    while time.perf_counter() - start < seconds:
        if key == "walk":
            done += mb.walk_lstat(os.path.join(mnt, "tree"))
            continue
        for _ in range(64):
            if key == "stat":
                os.stat(names[done % len(names)])
            elif key == "open_read":
                fd = os.open(names[done % len(names)], os.O_RDONLY)
                os.read(fd, mb.BLOCK)
                os.close(fd)
            elif done < MAX_CREATES:
                fd = os.open(os.path.join(scratch, f"c{done}"),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, block)
                os.close(fd)
            done += 1
    return done


def cpu_seconds(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def served(log: str) -> dict[str, int]:
    """The request counts from the daemon's last words ("served N requests (lookup 5, ...)")."""
    with open(log, errors="replace") as f:
        text = f.read()
    m = re.search(r"served (\d+) requests \(([^)]*)\)", text)
    if not m:
        raise RuntimeError(f"no request counts in the daemon's log: {text[-500:]}")
    out = {"requests": int(m.group(1))}
    for part in m.group(2).split(", "):
        if part:
            name, n = part.rsplit(" ", 1)
            out[name] = int(n)
    return out


def one_mount(policy: str, src: str, mnt: str, cache: str, key: str, seconds: float,
              log: str, profile_out: str | None, tarball: str) -> dict:
    if key in ("rename", "unlink"):
        os.mkdir(os.path.join(src, "scratch"))
        for n in range(MOVE_FILES):
            with open(os.path.join(src, "scratch", f"m{n}"), "wb") as f:
                f.write(b"x" * mb.BLOCK)
    cmd = [sys.executable]
    if profile_out:
        cmd += ["-m", "cProfile", "-o", profile_out]
    cmd += ["-m", "fpol.runtime.mount", "mount", policy, src, mnt, "--foreground",
            "--cache", cache, "--audit", os.devnull]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=mb.ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        for _ in range(3000):  # ready once it has said so (after INIT)
            with open(log, errors="replace") as f:
                if "fpol mount: " in f.read():
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited: {open(log).read()[-500:]}")
            time.sleep(0.01)
        else:
            raise RuntimeError("the daemon did not become ready in 30 s")
        u0, s0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        ops = run_workload(key, mnt, seconds, tarball)
        wall = time.perf_counter() - t0
        u1, s1 = cpu_seconds(proc.pid)
    finally:
        mb.unmount("fpol", mnt)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    for left in ("scratch", "job"):  # removed outside the mount, once it is gone
        if os.path.isdir(os.path.join(src, left)):
            shutil.rmtree(os.path.join(src, left))
    return {"ops": ops, "wall": wall, "user": u1 - u0, "sys": s1 - s0, "served": served(log)}


# --- reading a profile ---------------------------------------------------------------------

def _server_handlers(st: pstats.Stats) -> dict:
    """The request handlers (FuseServer methods called by dispatch) in this profile."""
    out = {}
    for func, (cc, nc, tt, ct, callers) in st.stats.items():
        if any(c[0].endswith("server.py") and c[2] in DISPATCH for c in callers) \
                and func[0].endswith("server.py") and func[2] not in DISPATCH:
            out[func] = (nc, tt, ct)
    return out


DISPATCH = ("dispatch", "_dispatch")  # FuseServer's request dispatch (and its inner part)


def _name(func) -> str:
    path, line, name = func
    if path == "~":
        return name  # a builtin, e.g. <built-in method posix.lstat>
    return f"{os.path.basename(path)}:{line}({name})"


def _enclosing(path: str) -> dict[int, str]:
    """line of each nested function or lambda in a source file -> its outermost method."""
    import ast
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError):
        return {}
    out: dict[int, str] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for meth in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            for node in ast.walk(meth):
                if node is not meth and isinstance(node, (ast.FunctionDef, ast.Lambda)):
                    out[node.lineno] = meth.name
    return out


def callee_lines(st: pstats.Stats, func, calls: int, depth: int, owners: set[str],
                 nested: dict, indent: str = "") -> list[str]:
    """The costliest callees of func, in µs per request of the handler (`calls`), `depth`
    levels down. A callee shared by several handlers (enforce's run, protocol's unpack) is
    followed only into closures of this handler (`owners`: its method and helpers), since
    the profile does not split a shared function's callees by who called it."""
    out = []
    callees = st.all_callees.get(func, {})
    shared = func[2] not in owners and nested.get(func[1]) not in owners \
        if func[0].endswith("server.py") else True
    rows = []
    for callee, (cc, nc, tt, ct) in callees.items():
        own = callee[0].endswith("server.py") and (callee[2] in owners
                                                   or nested.get(callee[1]) in owners)
        if shared and not own:
            continue
        rows.append((callee, nc, ct))
    for callee, nc, ct in sorted(rows, key=lambda r: -r[2])[:6]:
        if ct * 1e6 / calls < 0.5:
            continue
        out.append(f"{indent}- {_name(callee)}: {ct * 1e6 / calls:.1f} µs "
                   f"({nc / calls:.2g} calls)")
        if depth > 1:
            out += callee_lines(st, callee, calls, depth - 1, owners, nested, indent + "  ")
    return out


def serving_own_time(st: pstats.Stats) -> dict:
    """Own time and calls of each function, counting only calls made while serving (from
    callers reachable from FuseServer.serve), not those of start-up (policy check, BTF)."""
    serve = [k for k in st.stats if k[0].endswith("server.py") and k[2] == "serve"]
    seen, todo = set(serve), list(serve)
    while todo:
        for callee in st.all_callees.get(todo.pop(), {}):
            if callee not in seen:
                seen.add(callee)
                todo.append(callee)
    out: dict = {}
    for caller in seen:
        for callee, (cc, nc, tt, ct) in st.all_callees.get(caller, {}).items():
            n, t = out.get(callee, (0, 0.0))
            out[callee] = (n + nc, t + tt)
    return out


def profile_section(path: str, plain: dict) -> list[str]:
    st = pstats.Stats(path)
    st.calc_callees()
    handlers = _server_handlers(st)
    dispatch = next((v for k, v in st.stats.items()
                     if k[0].endswith("server.py") and k[2] == "dispatch"), None)
    replies = [(k, v) for k, v in st.stats.items()
               if k[0].endswith("device.py") and k[2] in ("reply", "reply_error")]
    reads = next((v for k, v in st.stats.items()
                  if k[0].endswith("device.py") and k[2] == "read"), None)
    out = []
    if dispatch:
        nc, ct = dispatch[1], dispatch[3]
        out.append(f"Under cProfile: dispatch {nc:,} requests, {ct * 1e6 / nc:.1f} µs each "
                   "(decide + perform + reply)"
                   + (f"; Channel.read {reads[3] * 1e6 / reads[1]:.1f} µs each (waiting "
                      "for the kernel included)" if reads else "") + "; "
                   + ", ".join(f"Channel.{k[2]} {v[3] * 1e6 / v[1]:.1f} µs each ({v[1]:,})"
                               for k, v in replies if v[1]) + ".")
    out += ["", "| request handler | calls | µs per call (cProfile) | own µs |",
            "|---|---|---|---|"]
    for func, (nc, tt, ct) in sorted(handlers.items(), key=lambda kv: -kv[1][2]):
        if ct < 0.001:
            continue
        out.append(f"| {func[2]} | {nc:,} | {ct * 1e6 / nc:.1f} | {tt * 1e6 / nc:.1f} |")
    own = sorted(((tt, nc, func) for func, (nc, tt) in serving_own_time(st).items()
                  if not (func[0] == "~" and "readv" in func[2])), reverse=True)
    out += ["", "Own time (not in callees) while serving, the 8 largest, as µs per request "
            "(waiting in readv left out):", ""]
    nreq = dispatch[1] if dispatch else 1
    out += [f"- {_name(func)}: {tt * 1e6 / nreq:.1f} µs ({nc / nreq:.2g} calls per request)"
            for tt, nc, func in own[:8]]
    for func, (nc, tt, ct) in sorted(handlers.items(), key=lambda kv: -kv[1][2])[:5]:
        if ct < 0.01:
            continue
        out += ["", f"`{func[2]}` ({nc:,} calls, {ct * 1e6 / nc:.1f} µs each): where it goes, "
                "µs per call", ""]
        owners = {func[2]} | {c[2] for c in st.all_callees.get(func, {})  # its own helpers
                              if c[0].endswith("server.py") and set(st.stats[c][4]) == {func}}
        out += callee_lines(st, func, nc, 3, owners, _enclosing(func[0]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--cache", default="auto,off", help="cache modes to profile")
    ap.add_argument("--workloads", default=",".join(k for k, _ in WORKLOADS))
    ap.add_argument("--keep", metavar="DIR", help="keep the .prof files here")
    ap.add_argument("--analyse", metavar="DIR",
                    help="only read the .prof files kept in DIR by an earlier --keep run")
    args = ap.parse_args(argv)
    if args.analyse:
        for cache in args.cache.split(","):
            for key, label in WORKLOADS:
                path = os.path.join(args.analyse, f"{cache}-{key}.prof")
                if key in args.workloads.split(",") and os.path.exists(path):
                    print("\n".join(["", f"### --cache {cache}: {label}", ""]
                                    + profile_section(path, {})))
        return 0
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("mount_profile: needs root and /dev/fuse", file=sys.stderr)
        return 3
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="fpol-mount-profile-")
    mnt = os.path.join(work, "mnt")
    sections: list[str] = []
    summary = ["| cache | workload | client ops/s | requests per op | daemon CPU µs per "
               "request (user + sys), no profiler | requests served (by type) |",
               "|---|---|---|---|---|---|"]
    try:
        src = os.path.join(work, "src")
        block = os.urandom(mb.BLOCK)
        for d in range(mb.DIRS):
            os.makedirs(os.path.join(src, "tree", f"d{d:02}"))
        for name in mb.tree_names(src):
            with open(name, "wb") as f:
                f.write(block)
        os.mkdir(mnt)
        tarball = mb.populate_job(work, JOB_FILES)
        policy = os.path.join(work, "bench.fpol")
        with open(policy, "w") as f:
            f.write(mb.POLICY)
        for cache in args.cache.split(","):
            for key, label in WORKLOADS:
                if key not in args.workloads.split(","):
                    continue
                print(f"mount_profile: --cache {cache}, {label} ...", file=sys.stderr)
                plain = one_mount(policy, src, mnt, cache, key, args.seconds,
                                  os.path.join(work, "plain.log"), None, tarball)
                prof = os.path.join(args.keep or work, f"{cache}-{key}.prof")
                one_mount(policy, src, mnt, cache, key, args.seconds,
                          os.path.join(work, "prof.log"), prof, tarball)
                sv = plain["served"]
                n = sv["requests"]
                types = ", ".join(f"{k} {v:,}" for k, v in sv.items() if k != "requests")
                summary.append(
                    f"| {cache} | {label} | {plain['ops'] / plain['wall']:,.0f} | "
                    f"{n / plain['ops']:.2f} | {(plain['user'] + plain['sys']) * 1e6 / n:.1f} "
                    f"({plain['user'] * 1e6 / n:.1f} + {plain['sys'] * 1e6 / n:.1f}) | {types} |")
                sections += ["", f"### --cache {cache}: {label}", ""]
                sections += profile_section(prof, plain)
    finally:
        mb.unmount("fpol", mnt)
        if mb.is_mounted(mnt):
            print(f"mount_profile: {mnt} still mounted; {work} left in place", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.seconds:g} s per workload, {mb.DIRS * mb.PER_DIR:,} files of 4 KiB in "
          f"{mb.DIRS} directories, policy of benchmarks/mount_bench.py; kernel "
          f"{os.uname().release}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}. Daemon CPU is counted in clock ticks "
          f"(1/{CLK_TCK} s) over the whole workload; requests include the few of mounting "
          "and unmounting.")
    print()
    print("\n".join(summary))
    print("\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
