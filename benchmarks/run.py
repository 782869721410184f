"""Run every benchmark in one go and write benchmarks/REPORT.md.

    python3 benchmarks/run.py            (or: make bench)

For two families of generated policies (benchmarks/policies.py: the benchmark shape and
the realistic one of issue 13) of 10, 100, 1,000, 3,000 and 10,000 rules it measures,
side by side in one run, each size in a process of its own: compile time per stage,
peak memory of fpol and of clang, class counts before and after minimisation, C and
object sizes, the check object's load time and verifier instructions, and the cost of a
decision inside the kernel (a bpf_loop timing loop), for the benchmark family against a
naive baseline that tests every rule in order. Then mount throughput
(benchmarks/mount_bench.py). Needs root.
"""

from __future__ import annotations

import argparse
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fpol.compiler.analyse import analyse  # noqa: E402
from fpol.compiler.classes import build_raw, tables  # noqa: E402
from fpol.compiler.minimise import minimise  # noqa: E402
from fpol.compiler.clang import clang_version, compile_c, find_clang  # noqa: E402
from fpol.compiler.diagnostics import Reporter  # noqa: E402
from fpol.compiler.driver import few_collections, no_collections  # noqa: E402
from fpol.compiler.evaluate import Request, parse_path  # noqa: E402
from fpol.compiler.lint import lint  # noqa: E402
from fpol.compiler.lower import lower  # noqa: E402
from fpol.compiler.parser import parse  # noqa: E402
from fpol.compiler.render import render  # noqa: E402
from fpol.runtime import libbpf  # noqa: E402
from fpol.runtime.engine import CheckEngine  # noqa: E402
from fpol.runtime.objects import Built  # noqa: E402

import naive  # noqa: E402
from policies import policy_text, realistic_text  # noqa: E402

import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402

SIZES = (10, 100, 1000, 3000, 10000)
FAMILIES = {"benchmark": policy_text, "realistic": realistic_text}
# Each (family, size) runs in a child process of its own, so its peak RSS is the compile's;
# clang runs through a wrapper that reports clang's own peak and caps its address space.
CLANG_CAP_KB = 4_000_000
ITERATIONS = 200_000
# The struct_ops object is built in parts of at most clang.PART_PROGRAMS programs, in
# parallel, and linked (compiler/clang.py), so it builds at every size within a few hundred
# MB per clang; but it costs clang ~10 ms of CPU per program (93,000 programs at 10,000
# realistic rules), so the benchmark builds it up to these sizes (SCALE.md has the others).
STRUCT_OPS_MAX = {"benchmark": 1000, "realistic": 1000}



def _planned(model):
    model.programs  # noqa: B018 (makes the struct_ops plan now)
    return model

def requests(n: int, family: str = "benchmark") -> list[tuple[str, Request]]:
    if family == "realistic":
        return realistic_requests(n)
    mid = (n // 2) // 4 * 4
    return [
        ("write, deep hit", Request("write", parse_path(f"/srv/s{mid}/data/db/file"))),
        ("read, miss", Request("read", parse_path("/usr/lib/x86_64-linux-gnu/libc.so.6"))),
        ("open r, hit", Request("open", parse_path(f"/home/u{mid + 1}/private/key"))),
    ]


def realistic_requests(n: int) -> list[tuple[str, Request]]:
    """Three requests into the realistic policy of n rules: under a `deny write under`
    path (deep), a miss, and a name one `matching` glob picks (its `*` component)."""
    text = realistic_text(n)
    found = re.search(r"^deny write under (\S+)$", text, re.M) or \
        re.search(r"^deny [^\n]* under (\S+)$", text, re.M)
    under = found.group(1) if found else "/app/data"
    matching = re.search(r'^deny \S+(?:, \S+)? matching "(\S+)/\*/(\S+)/\*\*"$', text, re.M)
    glob_path = f"{matching.group(1)}/anyname/{matching.group(2)}/f" if matching else under + "/g"
    return [
        ("write, deep hit", Request("write", parse_path(f"{under}/a/b/file"))),
        ("read, miss", Request("read", parse_path("/usr/lib/x86_64-linux-gnu/libc.so.6"))),
        ("open r, glob", Request("open", parse_path(glob_path))),
    ]


CLANG_WRAPPER = """#!/bin/sh
# clang for the benchmarks: capped, its own peak RSS (KB) appended to $FPOL_CLANG_PEAK.
ulimit -v {cap}
exec /usr/bin/time -a -o "$FPOL_CLANG_PEAK" -f %M {clang} "$@"
"""


def clang_peak_mb(fn, work: str):
    """Run fn() (which builds with compile_c) through the capped, measuring clang wrapper:
    (fn's result, clang's peak RSS in MB)."""
    wrapper = os.path.join(work, "clang-wrapper")
    if not os.path.exists(wrapper):
        with open(wrapper, "w") as f:
            f.write(CLANG_WRAPPER.format(cap=CLANG_CAP_KB, clang=find_clang()))
        os.chmod(wrapper, 0o755)
    peak = os.path.join(work, "clang-peak")
    if os.path.exists(peak):
        os.unlink(peak)
    old = os.environ.get("CLANG")
    os.environ["CLANG"], os.environ["FPOL_CLANG_PEAK"] = wrapper, peak
    try:
        out = fn()
    finally:
        if old is None:
            del os.environ["CLANG"]
        else:
            os.environ["CLANG"] = old
    with open(peak) as f:
        kbs = [int(x) for x in re.findall(r"^\d+$", f.read(), re.M)]
    return out, (max(kbs) // 1024 if kbs else None)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def measure(n: int, work: str, family: str = "benchmark") -> dict:
    text = FAMILIES[family](n).encode()
    r = Reporter(f"b{n}.fpol")
    out: dict = {"rules": n, "family": family}
    # Each stage with the GC paused, as compiler/driver.py check() runs them.
    (tree, source, _), out["parse"] = timed(no_collections()(lambda: parse(text, r.file, r)))
    policy, out["analyse"] = timed(no_collections()(lambda: analyse(tree, r)))

    @no_collections()
    def classes():
        raw = build_raw(policy)
        table = tables(policy, raw)
        lint(policy, raw, table, r)
        return raw, minimise(policy, raw, table)

    (raw, tree_), out["classes"] = timed(classes)
    assert not r.has_errors, r.sorted()[:3]
    out["unminimised"], out["minimised"] = len(raw), len(tree_.classes)
    # What the check object needs (lower, its render) and what only the struct_ops object
    # needs (the plan of its programs, made when first asked for: lower.Model.programs, and
    # its render) are timed apart: `fpol verify` and a daemon mount do the first alone.
    model, out["lower"] = timed(lambda: lower(tree_, source_name=r.file))
    c_check, out["render_check"] = timed(lambda: render(model, "check"))
    _, out["plan"] = timed(lambda: _planned(model))
    c_main, out["render_main"] = timed(lambda: render(model))
    out["c_kb"], out["check_c_kb"] = len(c_main) // 1024, len(c_check) // 1024
    out["to_check_c"] = out["parse"] + out["analyse"] + out["classes"] + out["lower"] + \
        out["render_check"]
    out["to_c"] = out["to_check_c"] + out["plan"] + out["render_main"]
    out["fpol_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    out["instances"] = len({i.name for i in model.instances})  # classes alike share one
    out["programs"] = len(model.programs)
    main_o, check_o = os.path.join(work, f"b{n}.bpf.o"), os.path.join(work, f"b{n}.check.bpf.o")
    (_, out["clang_check"]), out["clang_check_mb"] = clang_peak_mb(
        lambda: timed(lambda: compile_c(c_check, check_o, f"b{n}.check")), work)
    out["check_obj_kb"] = os.path.getsize(check_o) // 1024
    out["clang_main"] = out["obj_kb"] = out["clang_main_mb"] = None
    if n <= STRUCT_OPS_MAX[family]:
        # c_main passed as the lambda's default: pyflakes reads a lambda's body at the end of
        # the function, after the `del` below, and would take c_main for undefined there.
        (_, out["clang_main"]), out["clang_main_mb"] = clang_peak_mb(
            lambda c=c_main: timed(lambda: compile_c(c, main_o, f"b{n}")), work)
        out["obj_kb"] = os.path.getsize(main_o) // 1024
    del c_main

    with CheckEngine(Built(model, check_o, c_check)) as engine:
        out["load_ms"] = engine.report.load_ms
        stats = dict(engine.report.programs)
        out["insns"] = stats["fpol_check"].insns_processed
        reqs = requests(n, family)
        empty, _ = engine.bench(reqs[0][1], ITERATIONS, empty=True)
        out["loop_ns"] = empty
        out["ns"] = {label: engine.bench(req, ITERATIONS)[0] - empty for label, req in reqs}
        out["labels"] = [label for label, _ in reqs]

    out["naive_insns"], out["naive_ns"] = None, None
    if family != "benchmark":  # the naive baseline knows literal `under`/`at` scopes only
        return out
    naive_c = naive.generate(policy)
    naive_o = os.path.join(work, f"b{n}.naive.o")
    compile_c(naive_c, naive_o, f"b{n}.naive")
    with libbpf.BpfObject(naive_o) as obj:
        for p in obj.programs():
            p.want_stats()
        obj.load()
        prog = obj.program("naive_bench")
        out["naive_insns"] = prog.stats.insns_processed if prog.stats else None
        reqmap = obj.map("requests")
        iterations = max(200, ITERATIONS // max(1, n // 10))
        out["naive_ns"] = {}
        from fpol.compiler import ops

        for label, req in requests(n):
            atom = ops.request_atoms(req.op, req.flags, req.mask).source
            path = b"/" + b"/".join(req.path)
            reqmap.update(struct.pack("<I", 0), naive.encode_request(atom, path))
            ctx = bytearray(struct.pack("<QQII", iterations, 0, 0, 0))
            prog.test_run(ctx)
            _, ns, _, _ = struct.unpack("<QQII", bytes(ctx))
            out["naive_ns"][label] = ns / iterations - out["loop_ns"]
    return out


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def mount_table(seconds: float) -> str:
    proc = subprocess.run([sys.executable, os.path.join(HERE, "mount_bench.py"), "--seconds",
                           str(seconds)], capture_output=True, text=True)
    if not proc.stdout.strip():  # the mount bench prints its own section (## heading)
        return (f"## Mount throughput\n\n(mount benchmark failed: "
                f"{proc.stderr.strip()[-300:]})")
    return proc.stdout.strip() + "\n\n" + threads_table()


THREADS_INTRO = ("### More than one request in flight (`fpol mount --threads N`)\n\n"
                 "`benchmarks/threads_bench.py`: two client processes at once against one "
                 "mount per thread count. Threads read requests from clones of the FUSE "
                 "descriptor, but requests are decided one at a time (one policy per "
                 "request) and Python runs one thread at a time, so on this 2-CPU machine "
                 "more threads only add contention: the daemon stays single-threaded by "
                 "default.\n\n")


def threads_table() -> str:
    proc = subprocess.run([sys.executable, os.path.join(HERE, "threads_bench.py")],
                          capture_output=True, text=True)
    return THREADS_INTRO + (proc.stdout.strip() or
                            f"(failed: {proc.stderr.strip()[-300:]})")


def _decision_table(results: list[dict], family: str) -> list[str]:
    rs = [r for r in results if r["family"] == family]
    if not rs:
        return []
    labels = rs[0]["labels"]
    naive_cols = family == "benchmark"
    head = "| rules | loop ns | " + " | ".join(f"fpol: {l}" for l in labels)
    if naive_cols:
        head += " | " + " | ".join(f"naive: {l}" for l in labels)
    head += " | fpol verifier insns |" + (" naive verifier insns |" if naive_cols else "")
    lines = [f"### {family} family", "", head,
             "|---" * (3 + len(labels) * (2 if naive_cols else 1) + (1 if naive_cols else 0)) + "|"]
    for r in rs:
        row = f"| {r['rules']:,} | {r['loop_ns']:.1f} | " + " | ".join(f"{r['ns'][l]:.0f}" for l in labels)
        if naive_cols:
            row += " | " + " | ".join(_fmt(r["naive_ns"] and r["naive_ns"][l], ".0f") for l in labels)
        row += f" | {r['insns']:,} |" + (f" {r['naive_insns'] or '?'} |" if naive_cols else "")
        lines.append(row)
    first, last = rs[0], rs[-1]
    growth = max(last["ns"][l] / max(first["ns"][l], 1e-9) for l in labels)
    lines += ["", f"Cost at {last['rules']:,} rules vs {first['rules']} rules: at most "
              f"{growth:.2f}x (target: within 2x)."]
    by_1k = next((r for r in rs if r["rules"] == 1000), None)
    if naive_cols and by_1k and by_1k["naive_ns"]:
        ratio = min(by_1k["naive_ns"][l] / by_1k["ns"][l] for l in labels)
        lines.append(f"At 1,000 rules the naive baseline takes at least {ratio:.1f}x as long per "
                     "decision (the time ratio is the measure here, as the kernel does not count "
                     "executed instructions).")
    return lines + [""]


def _compile_table(results: list[dict]) -> list[str]:
    lines = ["| family | rules | classes (before min.) | parse s | analyse s | classes s | lower s "
             "| render check s | to check C s | plan s | render struct_ops s | **to C s** | "
             "fpol peak MB | clang check s (peak MB) | clang struct_ops s "
             "(peak MB) | instances / programs | C KB (struct_ops / check) | object KB "
             "(struct_ops / check) | check load ms |",
             "|---" * 19 + "|"]
    for r in results:
        main = "-" if r["clang_main"] is None else f"{r['clang_main']:.2f} ({_fmt(r['clang_main_mb'], ',')})"
        lines.append(
            f"| {r['family']} | {r['rules']:,} | {r['minimised']:,} ({r['unminimised']:,}) | "
            f"{r['parse']:.2f} | {r['analyse']:.2f} | {r['classes']:.2f} | {r['lower']:.2f} | "
            f"{r['render_check']:.2f} | {r['to_check_c']:.2f} | {r['plan']:.2f} | "
            f"{r['render_main']:.2f} | **{r['to_c']:.2f}** | {r['fpol_mb']:,} | "
            f"{r['clang_check']:.2f} ({_fmt(r['clang_check_mb'], ',')}) | {main} | "
            f"{r['instances']:,} / {r['programs']:,} | {r['c_kb']:,} / {r['check_c_kb']:,} | "
            f"{_fmt(r['obj_kb'], ',')} / {r['check_obj_kb']:,} | {r['load_ms']:.0f} |")
    return lines


def report(results: list[dict], mount: str, seconds: float) -> str:
    lines = [
        "# fpol benchmarks",
        "",
        "Written by `python3 benchmarks/run.py` (`make bench`); every figure below comes from "
        "one run, side by side with its baseline.",
        "",
        f"Machine: {platform.node() or 'vm'}, Linux {platform.release()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, clang {clang_version(find_clang())}, "
        f"libbpf {libbpf.version()}.",
        "",
        "Policies (benchmarks/policies.py):",
        "",
        "- **benchmark** family: N rules over distinct trees, four kinds in turn (`deny write "
        "under /srv/sI/data with EPERM`, `deny read under /home/uI/private`, `audit read under "
        "/var/log/lI`, `deny all under /etc/eI with EROFS`).",
        "- **realistic** family (issue 13): N rules drawn (seeded) over a small vocabulary of "
        "directory words, most with a numeric suffix 0-50, paths 1-5 components deep that "
        "overlap freely: 55% `deny OPS under PATH`, 15% `deny create named \"*.EXT\" under PATH`, "
        "10% `audit OPS under PATH`, 10% `deny OPS matching \"PATH/*/WORD/**\"`, 10% `redirect "
        "lookup to userspace under PATH`; `default allow`.",
        "",
        "Each (family, size) is measured in a process of its own: *fpol peak MB* is that "
        "process's peak RSS by the end of rendering (parse to C), *clang peak MB* clang's own "
        f"(run under a {CLANG_CAP_KB // 1000:,} MB address-space cap).",
        "",
        "## Decision cost in the kernel",
        "",
        f"ns per decision inside a bpf_loop of {ITERATIONS:,} iterations, minus the empty loop "
        "(the `loop` column), for three requests. fpol: the check object's `fpol_decide` (walk "
        "every component through the class transitions, then one table lookup). Naive (benchmark "
        "family only; it knows literal scopes, not globs): a program that tests every rule "
        "against the path in order, as a hand-written filter would. Verifier: instructions "
        "processed when loading.",
        "",
    ]
    for family in FAMILIES:
        lines += _decision_table(results, family)
    lines += ["## Compile time per stage, memory, sizes, classes", ""] + _compile_table(results)
    lines += ["", "`-`: the struct_ops object is not built above "
              + " and ".join(f"{n:,} rules ({f} family)" for f, n in STRUCT_OPS_MAX.items())
              + " (it builds at every size, in parts, but costs clang about 10 ms of CPU per "
              "program: see benchmarks/SCALE.md for 3,000 and 10,000 realistic rules).", ""]
    for family in FAMILIES:
        rs = [r for r in results if r["family"] == family]
        if not rs:
            continue
        last = rs[-1]
        verdict = "met" if last["to_c"] <= 5 else \
            f"missed by {last['to_c'] - 5:.2f} s, {last['to_c'] / 5 - 1:.0%}"
        stages = ", ".join(f"{label} {last[k]:.1f} s" for label, k in (
            ("parse", "parse"), ("analyse", "analyse"), ("classes", "classes"), ("lower", "lower"),
            ("render check", "render_check"), ("plan", "plan"), ("render struct_ops", "render_main")))
        lines.append(f"{family}: {last['rules']:,} rules to C (both objects) in {last['to_c']:.2f} s "
                     f"(target 5 s: {verdict}; {stages}); to the check object's C alone (what "
                     f"`fpol verify` compiles) in {last['to_check_c']:.2f} s; "
                     f"fpol peak {last['fpol_mb']:,} MB, clang (check "
                     f"object) {_fmt(last['clang_check_mb'], ',')} MB (target: under 2,048 MB each); "
                     f"check object verified, {last['insns']:,} instructions processed.")
    lines += ["", "Scale on realistic policies (issue 13): what changed, the figures before and after, "
              "the struct_ops object at scale and what is left: benchmarks/SCALE.md.", "",
              mount, ""]
    return "\n".join(lines)


def subjects_section() -> str:
    """The "Subject conditions" section: benchmarks/subjects.py, in a process of its own."""
    print("benchmarking subject conditions (1,000 rules) ...", file=sys.stderr)
    proc = subprocess.run([sys.executable, os.path.join(HERE, "subjects.py"), "--rules", "1000"],
                          capture_output=True, text=True)
    body = proc.stdout.strip() if proc.returncode == 0 else \
        f"(subjects benchmark failed: {proc.stderr.strip()[-300:]})"
    return ("\n\n## Subject conditions (issue 16)\n\nThe realistic policy of 1,000 rules against "
            "the same with a subject condition on every third rule (benchmarks/subjects.py).\n\n"
            + body + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="policy sizes in rules (default 10,100,1000,3000,10000)")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--mount-seconds", type=float, default=2.0)
    ap.add_argument("--output", default=os.path.join(HERE, "REPORT.md"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # FAMILY:N, in a child: print JSON
    args = ap.parse_args()
    if args.one:
        family, n = args.one.split(":")
        with tempfile.TemporaryDirectory(prefix="fpol-bench-") as work:
            with few_collections():  # as `fpol` runs the compiler
                print(json.dumps(measure(int(n), work, family)))
        return 0
    results = []
    for family in args.families.split(","):
        for n in (int(x) for x in args.sizes.split(",")):
            print(f"benchmarking {family} {n} rules ...", file=sys.stderr)
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", f"{family}:{n}"],
                                  stdout=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                print(f"  failed (exit {proc.returncode})", file=sys.stderr)
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    mount = mount_table(args.mount_seconds)
    text = report(results, mount, args.mount_seconds) + subjects_section()
    with open(args.output, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
