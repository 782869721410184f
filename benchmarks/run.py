"""Run every benchmark in one go and write benchmarks/REPORT.md.

    python3 benchmarks/run.py            (or: make bench)

For generated policies of 10, 100, 1,000 and 10,000 rules it measures, side by side in
one run: compile time per stage, class counts before and after minimisation, C and
object sizes, the check object's load time and verifier instructions, and the cost of a
decision inside the kernel (a bpf_loop timing loop) against a naive baseline that tests
every rule in order. Then mount throughput (benchmarks/mount_bench.py). Needs root.
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
from fpol.compiler.classes import build_raw, minimise, tables  # noqa: E402
from fpol.compiler.clang import clang_version, compile_c, find_clang  # noqa: E402
from fpol.compiler.diagnostics import Reporter  # noqa: E402
from fpol.compiler.driver import few_collections  # noqa: E402
from fpol.compiler.evaluate import Request, parse_path  # noqa: E402
from fpol.compiler.lint import lint  # noqa: E402
from fpol.compiler.lower import lower  # noqa: E402
from fpol.compiler.parser import parse  # noqa: E402
from fpol.compiler.render import render  # noqa: E402
from fpol.runtime import libbpf  # noqa: E402
from fpol.runtime.engine import CheckEngine  # noqa: E402
from fpol.runtime.objects import Built  # noqa: E402

import naive  # noqa: E402
from policies import policy_text  # noqa: E402

SIZES = (10, 100, 1000, 10000)
ITERATIONS = 200_000
# clang needs about a minute for the struct_ops object of 1,000 rules (one program per hook
# per class with name transitions); above this it is not built (the report says so).
STRUCT_OPS_MAX = 1000


def requests(n: int) -> list[tuple[str, Request]]:
    mid = (n // 2) // 4 * 4
    return [
        ("write, deep hit", Request("write", parse_path(f"/srv/s{mid}/data/db/file"))),
        ("read, miss", Request("read", parse_path("/usr/lib/x86_64-linux-gnu/libc.so.6"))),
        ("open r, hit", Request("open", parse_path(f"/home/u{mid + 1}/private/key"))),
    ]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def measure(n: int, work: str) -> dict:
    text = policy_text(n).encode()
    r = Reporter(f"b{n}.fpol")
    out: dict = {"rules": n}
    (tree, source, _), out["parse"] = timed(lambda: parse(text, r.file, r))
    policy, out["analyse"] = timed(lambda: analyse(tree, r))

    def classes():
        raw = build_raw(policy)
        table = tables(policy, raw)
        lint(policy, raw, table, r)
        return raw, minimise(policy, raw, table)

    (raw, tree_), out["classes"] = timed(classes)
    assert not r.has_errors, r.sorted()[:3]
    out["unminimised"], out["minimised"] = len(raw), len(tree_.classes)
    model, out["lower"] = timed(lambda: lower(tree_, source_name=r.file))
    (c_main, c_check), out["render"] = timed(lambda: (render(model), render(model, "check")))
    out["c_kb"], out["check_c_kb"] = len(c_main) // 1024, len(c_check) // 1024
    out["to_c"] = out["parse"] + out["analyse"] + out["classes"] + out["lower"] + out["render"]
    main_o, check_o = os.path.join(work, f"b{n}.bpf.o"), os.path.join(work, f"b{n}.check.bpf.o")
    _, out["clang_check"] = timed(lambda: compile_c(c_check, check_o, f"b{n}.check"))
    out["check_obj_kb"] = os.path.getsize(check_o) // 1024
    out["clang_main"] = out["obj_kb"] = None
    if n <= STRUCT_OPS_MAX:
        _, out["clang_main"] = timed(lambda: compile_c(c_main, main_o, f"b{n}"))
        out["obj_kb"] = os.path.getsize(main_o) // 1024

    with CheckEngine(Built(model, check_o, c_check)) as engine:
        out["load_ms"] = engine.report.load_ms
        stats = dict(engine.report.programs)
        out["insns"] = stats["fpol_check"].insns_processed
        empty, _ = engine.bench(requests(n)[0][1], ITERATIONS, empty=True)
        out["loop_ns"] = empty
        out["ns"] = {label: engine.bench(req, ITERATIONS)[0] - empty for label, req in requests(n)}

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
    return proc.stdout.strip()


def report(results: list[dict], mount: str, seconds: float) -> str:
    labels = list(results[0]["ns"])
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
        "Policies: N rules over distinct trees, four kinds in turn (`deny write under /srv/sI/data "
        "with EPERM`, `deny read under /home/uI/private`, `audit read under /var/log/lI`, "
        "`deny all under /etc/eI with EROFS`); see benchmarks/policies.py.",
        "",
        "## Decision cost in the kernel",
        "",
        f"ns per decision inside a bpf_loop of {ITERATIONS:,} iterations, minus the empty loop "
        "(the `loop` column), for three requests. fpol: the check object's `fpol_decide` (walk "
        "every component through the class transitions, then one table lookup). Naive: a "
        "program that tests every rule against the path in order, as a hand-written filter "
        "would. Verifier: instructions processed when loading.",
        "",
        "| rules | loop ns | " + " | ".join(f"fpol: {l}" for l in labels) + " | "
        + " | ".join(f"naive: {l}" for l in labels) + " | fpol verifier insns | naive verifier insns |",
        "|---" * (4 + 2 * len(labels)) + "|",
    ]
    for r in results:
        lines.append(f"| {r['rules']:,} | {r['loop_ns']:.1f} | "
                     + " | ".join(f"{r['ns'][l]:.0f}" for l in labels) + " | "
                     + " | ".join(f"{r['naive_ns'][l]:.0f}" for l in labels)
                     + f" | {r['insns']:,} | {r['naive_insns'] or '?'} |")
    first, last = results[0], results[-1]
    by_1k = next((r for r in results if r["rules"] == 1000), None)
    growth = max(last["ns"][l] / first["ns"][l] for l in labels)
    lines += ["", f"Cost at {last['rules']:,} rules vs {first['rules']} rules: at most "
              f"{growth:.2f}x (target: within 2x)."]
    if by_1k:
        ratio = min(by_1k["naive_ns"][l] / by_1k["ns"][l] for l in labels)
        lines.append(f"At 1,000 rules the naive baseline takes at least {ratio:.1f}x as long per "
                     "decision (target: 20x fewer instructions; the time ratio is the measure here, "
                     "as the kernel does not count executed instructions).")
    lines += ["", "## Compile time per stage, sizes, classes", "",
              "| rules | parse s | analyse s | classes s | lower s | render s | **to C s** | "
              "clang check s | clang struct_ops s | classes (before min.) | C KB (struct_ops / check) "
              "| object KB (struct_ops / check) | check load ms |",
              "|---" * 13 + "|"]
    for r in results:
        lines.append(
            f"| {r['rules']:,} | {r['parse']:.2f} | {r['analyse']:.2f} | {r['classes']:.2f} | "
            f"{r['lower']:.2f} | {r['render']:.2f} | **{r['to_c']:.2f}** | {r['clang_check']:.2f} | "
            f"{_fmt(r['clang_main'], '.2f')} | {r['minimised']:,} ({r['unminimised']:,}) | "
            f"{r['c_kb']:,} / {r['check_c_kb']:,} | {_fmt(r['obj_kb'], ',')} / {r['check_obj_kb']:,} | "
            f"{r['load_ms']:.0f} |")
    lines += ["", f"Target: a 10,000-rule policy compiles to C in under 5 s: "
              f"{last['to_c']:.2f} s measured at {last['rules']:,} rules; its check object "
              f"verified ({last['insns']:,} instructions processed).",
              f"`-` : the struct_ops object is not built above {STRUCT_OPS_MAX:,} rules (clang time "
              "grows with the number of instances that need their own programs).", ""]
    if last["to_c"] > 5:
        stages = {k: last[k] for k in ("parse", "analyse", "classes", "lower", "render")}
        breakdown = ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
        lines += [f"Missed by {last['to_c'] / 5:.1f}x. Every stage grows linearly with the "
                  f"number of classes ({last['minimised']:,} here), but each pays Python time per "
                  f"class or line: {breakdown}. Rendering writes {last['c_kb'] // 1024} MB of C, "
                  "most of it one struct_ops instance per class.", ""]
    lines += [mount, ""]

    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="policy sizes in rules (default 10,100,1000,10000)")
    ap.add_argument("--mount-seconds", type=float, default=2.0)
    ap.add_argument("--output", default=os.path.join(HERE, "REPORT.md"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="fpol-bench-") as work:
        for n in (int(x) for x in args.sizes.split(",")):
            print(f"benchmarking {n} rules ...", file=sys.stderr)
            with few_collections():  # as `fpol` runs the compiler
                results.append(measure(n, work))
    mount = mount_table(args.mount_seconds)
    text = report(results, mount, args.mount_seconds)
    with open(args.output, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
