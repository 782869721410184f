"""Subject conditions at scale (issue 16): the realistic policy of N rules
(benchmarks/policies.py `realistic_text`) against the same policy with `by` / `except by`
conditions on a third of its rules, side by side in one run.

    python3 benchmarks/subjects.py [--rules 1000] [--struct-ops]     (needs root)

Measured for each: classes before and after minimisation, subject classes, time to C
(parse, analyse, classes, lower, render), clang time for the check object (and, with
--struct-ops, for the struct_ops object: minutes at 1,000 rules), the check object's load
time and verifier instructions (fpol_check, and fpol_whoami: the credential reading of the
struct_ops programs), and the cost of one decision inside the kernel (CheckEngine.bench: a
bpf_loop over the decision, minus the empty loop) for requests by different requesters.
Prints a Markdown table (the "Subject conditions" section of benchmarks/REPORT.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fpol.compiler.analyse import analyse  # noqa: E402
from fpol.compiler.classes import build_raw, tables  # noqa: E402
from fpol.compiler.minimise import minimise  # noqa: E402
from fpol.compiler.driver import no_collections  # noqa: E402
from fpol.compiler.clang import clang_version, compile_c  # noqa: E402
from fpol.compiler.diagnostics import Reporter  # noqa: E402
from fpol.compiler.evaluate import Evaluator, Request, parse_path  # noqa: E402
from fpol.compiler.lint import lint  # noqa: E402
from fpol.compiler.lower import lower  # noqa: E402
from fpol.compiler.parser import parse  # noqa: E402
from fpol.compiler.render import render  # noqa: E402
from fpol.runtime.engine import CheckEngine  # noqa: E402
from fpol.runtime.objects import Built  # noqa: E402

from policies import realistic_text  # noqa: E402

ITERATIONS = 200_000

# What a third of the rules get: who they are for, as real policies say it. Service and
# login uid ranges, a few well-known groups (Debian's adm, sudo, www-data, staff, users),
# and root exempted.
SUBJECT_CLAUSES = (
    ("uid range", ("by uid 1000-59999", "by uid 10000-19999", "by uid 100-999",
                   "by uid 2000-2999", "by uid 60000-65533")),
    ("gid point", ("by gid 4", "by gid 27", "by gid 33", "by gid 50", "by gid 100")),
    ("except root", ("except by uid 0",)),
)


def _planned(model):
    model.programs  # noqa: B018 (makes the struct_ops plan now)
    return model


def subject_text(n: int, seed: int = 13) -> str:
    """realistic_text(n, seed) with a subject condition on every third rule, in turn a uid
    range, a gid point and `except by uid 0` (the choice within a kind seeded)."""
    rng = random.Random(seed * 7_919 + n)
    lines = realistic_text(n, seed).splitlines()
    out, k = [], 0
    for line in lines:
        if line.split(" ", 1)[0] in ("deny", "audit", "redirect", "allow"):
            if k % 3 == 0:
                _, choices = SUBJECT_CLAUSES[(k // 3) % len(SUBJECT_CLAUSES)]
                line = f"{line} {rng.choice(choices)}"
            k += 1
        out.append(line)
    return "\n".join(out) + "\n"


def requests(n: int) -> list[tuple[str, Request]]:
    """Requests into the realistic policy of n rules (as benchmarks/run.py asks them), each
    made by root, by a login user (uid 1000, gid 1000) and by an admin (uid 1000, gid 4): a
    deep hit, a path a subject-conditioned rule decides (for logins), and a miss."""
    text = realistic_text(n)
    found = re.search(r"^deny write under (\S+)$", text, re.M) or \
        re.search(r"^deny [^\n]* under (\S+)$", text, re.M)
    under = found.group(1) if found else "/app/data"
    # A path a rule with a subject condition decides (in subject_text), for logins.
    cond = re.search(r"^deny (?:write|all|read, write) under (\S+) by uid 1000-59999$",
                     subject_text(n), re.M)
    cond_path = cond.group(1) if cond else under
    out = []
    for what, req in (("write, deep hit", Request("write", parse_path(f"{under}/a/b/file"))),
                      ("write, conditioned rule", Request("write", parse_path(f"{cond_path}/f"))),
                      ("read, miss", Request("read", parse_path("/usr/lib/x86_64-linux-gnu/libc.so.6")))):
        for who, uid, gid in (("root", 0, 0), ("uid 1000", 1000, 1000), ("uid 1000 gid 4", 1000, 4)):
            out.append((f"{what}, {who}", Request(req.op, req.path, uid=uid, gid=gid)))
    return out


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def measure(name: str, text: str, work: str, struct_ops: bool, n: int) -> dict:
    r = Reporter(f"{name}.fpol")
    out: dict = {"name": name}
    (tree, source, _), out["parse"] = timed(lambda: parse(text.encode(), r.file, r))
    policy, out["analyse"] = timed(lambda: analyse(tree, r))

    @no_collections()  # as compiler/driver.py check() runs these stages
    def classes():
        raw = build_raw(policy)
        table = tables(policy, raw)
        lint(policy, raw, table, r)
        return raw, minimise(policy, raw, table)

    (raw, ctree), out["classes"] = timed(classes)
    assert not r.has_errors, [d.render() for d in r.sorted()[:3]]
    out["conditioned"] = sum(1 for rule in policy.rules if rule.has_subject)
    out["unminimised"], out["minimised"] = len(raw), len(ctree.classes)
    out["subjects"] = len(ctree.subjects)
    out["cells"] = len(ctree.subjects.uid_starts) * len(ctree.subjects.gid_starts)
    # The struct_ops plan is made when first asked for (lower.Model.programs): here, so that
    # "lower" keeps counting it and "render" counts rendering alone.
    model, out["lower"] = timed(lambda: _planned(lower(ctree, source_name=r.file)))
    out["instances"], out["programs"] = len(model.instances), len(model.programs)
    (c_main, c_check), out["render"] = timed(lambda: (render(model), render(model, "check")))
    out["to_c"] = sum(out[k] for k in ("parse", "analyse", "classes", "lower", "render"))
    out["c_kb"], out["check_c_kb"] = len(c_main) // 1024, len(c_check) // 1024
    check_o = os.path.join(work, f"{name}.check.bpf.o")
    _, out["clang_check"] = timed(lambda: compile_c(c_check, check_o, f"{name}.check"))
    out["check_obj_kb"] = os.path.getsize(check_o) // 1024
    out["clang_main"] = None
    if struct_ops:
        main_o = os.path.join(work, f"{name}.bpf.o")
        _, out["clang_main"] = timed(lambda: compile_c(c_main, main_o, name))
    evaluator = Evaluator(policy)
    with CheckEngine(Built(model, check_o, c_check)) as engine:
        out["load_ms"] = engine.report.load_ms
        stats = dict(engine.report.programs)
        out["insns"] = stats["fpol_check"].insns_processed
        out["whoami_insns"] = stats["fpol_whoami"].insns_processed if "fpol_whoami" in stats else None
        reqs = requests(n)
        empty, _ = engine.bench(reqs[0][1], ITERATIONS, empty=True)
        out["loop_ns"] = empty
        out["ns"], out["decisions"] = {}, {}
        for label, req in reqs:
            ns, _ = engine.bench(req, ITERATIONS)
            out["ns"][label] = ns - empty
            got = engine.evaluate(req).decision
            want = evaluator.evaluate(req).decision
            assert (got.kind, got.errno) == (want.kind, want.errno), (label, got, want)
            out["decisions"][label] = want.short()
    return out


def table(results: list[dict], n: int) -> str:
    a, b = results
    rows = [
        ("rules with subject conditions", "conditioned", "{}"),
        ("classes before minimisation", "unminimised", "{:,}"),
        ("classes", "minimised", "{:,}"),
        ("subject classes (uid x gid cells)", None, None),
        ("struct_ops instances", "instances", "{:,}"),
        ("struct_ops programs", "programs", "{:,}"),
        ("parse + analyse (s)", None, None),
        ("classes (s)", "classes", "{:.2f}"),
        ("lower + render (s)", None, None),
        ("to C, total (s)", "to_c", "{:.2f}"),
        ("check object C (KB)", "check_c_kb", "{:,}"),
        ("struct_ops C (KB)", "c_kb", "{:,}"),
        ("clang, check object (s)", "clang_check", "{:.1f}"),
        ("clang, struct_ops C in one invocation (s)", "clang_main", "{:.1f}"),
        ("check object (KB)", "check_obj_kb", "{}"),
        ("load + verify (ms)", "load_ms", "{:.0f}"),
        ("verifier insns, fpol_check", "insns", "{:,}"),
        ("verifier insns, fpol_whoami", "whoami_insns", "{:,}"),
    ]
    lines = [f"| {n:,} rules | without subject conditions | with them on a third of the rules |",
             "|---|---:|---:|"]
    for label, key, spec in rows:
        if label.startswith("subject classes"):
            vals = [f"{r['subjects']} ({r['cells']})" for r in results]
        elif label.startswith("parse"):
            vals = [f"{r['parse'] + r['analyse']:.2f}" for r in results]
        elif label.startswith("lower"):
            vals = [f"{r['lower'] + r['render']:.2f}" for r in results]
        else:
            vals = ["-" if r[key] is None else spec.format(r[key]) for r in results]
        lines.append(f"| {label} | {vals[0]} | {vals[1]} |")
    lines += ["", "| decision inside the kernel (ns) | without | with | decided (without / with) |",
              "|---|---:|---:|---|"]
    for label in b["ns"]:
        lines.append(f"| {label} | {a['ns'][label]:.0f} | {b['ns'][label]:.0f} | "
                     f"{a['decisions'][label]} / {b['decisions'][label]} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--struct-ops", action="store_true",
                    help="also build the struct_ops object with clang (slow at 1,000 rules)")
    ap.add_argument("--show-policy", action="store_true", help="print the policy with subjects")
    args = ap.parse_args()
    n = args.rules
    if args.show_policy:
        sys.stdout.write(subject_text(n))
        return 0
    # Warm up (the parser's tables, first imports) so neither policy pays for it.
    warm = Reporter("warm.fpol")
    analyse(parse(b"deny read under /x by uid 5\n", warm.file, warm)[0], warm)
    with tempfile.TemporaryDirectory(prefix="fpol-subjects-") as work:
        results = [measure(f"r{n}", realistic_text(n), work, args.struct_ops, n),
                   measure(f"s{n}", subject_text(n), work, args.struct_ops, n)]
    print(f"<!-- benchmarks/subjects.py --rules {n}{' --struct-ops' if args.struct_ops else ''}"
          f": {platform.release()}, {clang_version()}, {os.cpu_count()} CPUs -->")
    print(table(results, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
