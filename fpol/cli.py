"""The `fpol` command line.

Exit codes: 0 ok, 1 policy errors or failed expectations, 2 usage, 3 environment
(a kernel feature or tool this machine lacks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Optional, Sequence

from fpol import __version__
from fpol.compiler.subjects import CREDENTIALS
from fpol.compiler.errors import EXIT_ENV, EXIT_OK, EXIT_POLICY, EXIT_USAGE, FpolError, UsageProblem


class UsageError(UsageProblem):
    """Bad arguments or input files (exit code 2)."""


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None


def _display_name(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _print_diagnostics(checked_list, fmt: str) -> None:
    from fpol.compiler.diagnostics import render_json, render_text

    diags = [d for c in checked_list for d in c.diagnostics]
    if fmt == "json":
        print(render_json(diags))
        return
    if diags:
        sources = {f: lines for c in checked_list for f, lines in c.sources.items()}
        print(render_text(diags, sources), file=sys.stderr)


# --- commands ------------------------------------------------------------------------

def cmd_check(args) -> int:
    from fpol.compiler.driver import check

    results = [check(_read(p), _display_name(p), no_daemon=args.no_daemon) for p in args.files]
    _print_diagnostics(results, args.format)
    errors = sum(1 for c in results for d in c.diagnostics if d.is_error)
    warnings = sum(1 for c in results for d in c.diagnostics if not d.is_error)
    if args.format == "text":
        if errors or warnings:
            print(f"{errors} error(s), {warnings} warning(s) in {len(results)} file(s)", file=sys.stderr)
        else:
            for c in results:
                p = c.policy
                assert p is not None and c.classes is not None  # no errors
                print(f"{c.source.file}: ok (policy {p.name}, {len(p.rules)} rules, "
                      f"{len(c.classes.classes)} classes)")
                if p.has_subjects:
                    print("  " + _subjects_note(c.classes))
    if errors or (args.strict and warnings):
        return EXIT_POLICY
    return EXIT_OK


def _subjects_note(tree) -> str:
    """How subject conditions are realised (docs/realisation.md, "Who is asking")."""
    from fpol.compiler.subjects import daemon_classes

    n = daemon_classes(tree)
    return (f"who is asking: {len(tree.subjects)} subject classes. The daemon mount decides "
            f"with each request's uid and gid. fuse-bpf: the programs read the requester's "
            f"fsuid and fsgid (bpf_get_current_task_btf: CAP_PERFMON, CONFIG_BPF_EVENTS), and "
            f"send lookups and getattrs that depend on it to the daemon (the kernel caches "
            f"their answers for every user); where they cannot read it (--credentials daemon), "
            f"{n} class{'es send' if n != 1 else ' sends'} every op that depends on it to the "
            f"daemon")


def cmd_fmt(args) -> int:
    from fpol.compiler.diagnostics import Reporter
    from fpol.compiler.fmt import format_policy
    from fpol.compiler.parser import parse

    if args.write and "-" in args.files:
        raise UsageError("--write cannot rewrite standard input")
    status = EXIT_OK
    for path in args.files:
        data = _read(path)
        name = _display_name(path)
        reporter = Reporter(name)
        tree, source, _ = parse(data, name, reporter)
        if reporter.has_errors:
            from fpol.compiler.diagnostics import render_text

            print(render_text(reporter.sorted(), {name: list(source.lines)}), file=sys.stderr)
            print(f"{name}: not formatted: fix the errors above first", file=sys.stderr)
            status = EXIT_POLICY
            continue
        text = format_policy(tree)
        canonical = text.encode("utf-8") == data
        if args.check:
            if not canonical:
                print(f"{name}: not in canonical form (run `fpol fmt --write {name}`)", file=sys.stderr)
                status = EXIT_POLICY
        elif args.write:
            if not canonical:
                _write_atomically(path, text.encode("utf-8"))
                print(f"reformatted {name}", file=sys.stderr)
        else:
            sys.stdout.write(text)
    return status


def _write_atomically(path: str, data: bytes) -> None:
    """Replace a file without a window in which it is half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fpol-fmt-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_policy(path: str):
    """Check a policy for commands that need a valid one; print diagnostics on failure."""
    from fpol.compiler.driver import check

    checked = check(_read(path), _display_name(path))
    if not checked.ok:
        _print_diagnostics([checked], "text")
        return None
    return checked


def _request(args):
    from fpol.compiler import ops
    from fpol.compiler.evaluate import Request, parse_path
    from fpol.compiler.paths import PathProblem

    if args.op not in ops.SINGLE_OPS:
        from fpol.compiler.diagnostics import did_you_mean

        hint = did_you_mean(args.op, ops.SINGLE_OPS) or "requests name single ops, e.g. open, write, rename"
        raise UsageError(f"unknown op `{args.op}`; {hint}")
    try:
        path = parse_path(args.path)
        to = parse_path(args.to) if args.to is not None else None
        flags = ops.parse_flags(args.flags) if args.flags else (0 if args.op != "create" else ops.O_WRONLY)
        mask = ops.parse_mask(args.mask) if args.mask else 0
    except (PathProblem, ops.DetailError) as e:
        raise UsageError(getattr(e, "message", str(e))) from None
    if args.op in ops.TWO_PATH_OPS and to is None:
        raise UsageError(f"`{args.op}` needs --to PATH (the destination)")
    if args.op not in ops.TWO_PATH_OPS and to is not None:
        raise UsageError(f"`{args.op}` takes no --to")
    from fpol.compiler.cases import subject_id

    try:
        uid = subject_id("--uid", args.uid) if args.uid is not None else 0
        gid = subject_id("--gid", args.gid) if args.gid is not None else 0
    except ValueError as e:
        raise UsageError(str(e)) from None
    return Request(args.op, path, to, flags, mask, uid=uid, gid=gid)


def _engine(args, checked):
    """The function that decides requests: the reference evaluator or the kernel."""
    if args.engine == "kernel":
        from fpol.runtime.engine import kernel_engine

        return kernel_engine(checked)
    from fpol.compiler.evaluate import Evaluator

    return Evaluator(checked.policy).evaluate


def cmd_explain(args) -> int:
    from fpol.compiler.explain import dumps, to_json, to_text

    request = _request(args)
    checked = _load_policy(args.file)
    if checked is None:
        return EXIT_POLICY
    verdict = _engine(args, checked)(request)
    if args.format == "json":
        print(dumps(to_json(checked.policy, verdict)))
    else:
        print(to_text(checked.policy, verdict,
                      subject_given=args.uid is not None or args.gid is not None))
    return EXIT_OK


def _object_paths(out: str) -> tuple[str, str]:
    """OUT.bpf.o -> (OUT.bpf.o, OUT.check.bpf.o)."""
    stem = out[:-len(".bpf.o")] if out.endswith(".bpf.o") else os.path.splitext(out)[0]
    return out, stem + ".check.bpf.o"


def build_objects(checked, out: str, abi=None, credentials: str = "kernel") -> tuple[str, str]:
    """Render and build both objects of a checked policy.

    Each object is built into a temporary file beside its destination and renamed over it
    only once both are built, so a failed or interrupted compile leaves OUT as it was: never
    half-written, never one new object beside an old one (the check object is renamed
    first, the struct_ops object last)."""
    from fpol.compiler.clang import compile_c
    from fpol.compiler.lower import lower
    from fpol.compiler.render import render

    name = os.path.basename(checked.source.file)
    model = lower(checked.classes, abi=abi, source_name=name)
    # The check object takes who is asking from its requests and keeps the policy's own
    # decisions; the struct_ops object realises them (subjects.realise_subjects).
    main_model = model if not checked.policy.has_subjects else \
        lower(checked.classes, abi=abi, source_name=name, credentials=credentials)
    main, check_obj = _object_paths(out)
    temps: list[str] = []
    try:
        for path in (main, check_obj):  # clang creates them (so the umask applies)
            directory, base = os.path.split(os.path.abspath(path))
            temps.append(os.path.join(directory, f".{base}.{os.getpid()}-"
                                                 f"{os.urandom(4).hex()}.tmp"))
        compile_c(render(main_model, "struct_ops"), temps[0], checked.policy.name)
        compile_c(render(model, "check"), temps[1], checked.policy.name + ".check")
        os.replace(temps[1], check_obj)
        os.replace(temps[0], main)
    except BaseException:
        for tmp in temps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    return main, check_obj


def cmd_compile(args) -> int:
    if args.emit == "ast":
        from fpol.compiler.diagnostics import Reporter
        from fpol.compiler.parser import parse

        reporter = Reporter(_display_name(args.file))
        tree, source, _ = parse(_read(args.file), reporter.file, reporter)
        if reporter.has_errors:
            from fpol.compiler.driver import Checked

            _print_diagnostics([Checked(tree, source, None, None, reporter.sorted())], "text")
            return EXIT_POLICY
        return _emit_text(tree.dump(), args.output)
    checked = _load_policy(args.file)
    if checked is None:
        return EXIT_POLICY
    if args.emit == "policy":
        return _emit_text(checked.policy.dump(), args.output)
    if args.emit == "classes":
        return _emit_text(checked.classes.dump(), args.output)
    if args.emit == "dot":
        return _emit_text(checked.classes.dot(), args.output)
    if args.emit in ("c", "check-c"):
        from fpol.compiler.lower import lower
        from fpol.compiler.render import render

        model = lower(checked.classes, abi=args.abi, source_name=os.path.basename(checked.source.file),
                      credentials=args.credentials if args.emit == "c" else None)
        return _emit_text(render(model, "struct_ops" if args.emit == "c" else "check"), args.output)
    out = args.output or os.path.splitext(os.path.basename(args.file))[0] + ".bpf.o"
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"cannot write {out}: no directory {out_dir}")
    try:
        main, check_obj = build_objects(checked, out, args.abi, args.credentials)
    except OSError as e:
        print(f"fpol: cannot write {out}: {e.strerror}"
              f"{f' ({e.filename})' if e.filename else ''}; nothing written", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {main} ({len(checked.classes.classes)} fuse_ops instances) and {check_obj} "
          f"from {checked.source.file} (sha256 {checked.digest})")
    return EXIT_OK


def cmd_verify(args) -> int:
    from fpol.runtime import libbpf
    from fpol.runtime.engine import CheckEngine, rule_for_verifier_log
    from fpol.runtime.objects import build

    checked = _load_policy(args.file)
    if checked is None:
        return EXIT_POLICY
    try:
        built = build(checked, "check", abi=args.abi)
        with CheckEngine(built) as engine:
            report = engine.report
    except libbpf.LibbpfError as e:
        line, text, rule = rule_for_verifier_log(e.verifier_log, built.source)
        print(f"{checked.source.file}: the kernel verifier rejected the check object: {e}",
              file=sys.stderr)
        if line:
            print(f"  at generated line {line}: {text}", file=sys.stderr)
        if rule:
            print(f"  generated for: {rule}", file=sys.stderr)
        tail = [l for l in e.verifier_log.strip().splitlines() if l.strip()][-15:]
        if tail:
            print("  verifier log (end):", file=sys.stderr)
            for l in tail:
                print("    " + l, file=sys.stderr)
        return EXIT_POLICY
    classes = len(checked.classes.classes)
    print(f"{checked.source.file}: check object verified by this kernel "
          f"({classes} classes, loaded in {report.load_ms:.1f} ms)")
    for name, stats in report.programs:
        if stats:
            print(f"  {name}: {stats.insns_processed} instructions processed, verified in "
                  f"{(stats.verification_usec or 0) / 1000:.1f} ms, stack {stats.stack_depth}")
        else:
            print(f"  {name}: verified")
    from fpol.runtime.probe import fuse_ops_abi

    abi = fuse_ops_abi()
    if abi is None:
        print("  struct_ops object: not loadable here, this kernel has no "
              "struct fuse_ops (its decision logic is the code verified above)")
    else:
        try:
            main = build(checked, "struct_ops", abi=args.abi or abi, credentials=args.credentials)
            with libbpf.BpfObject(main.path) as obj:
                obj.load()
            # Classes that behave alike share an instance (compiler/lower.py).
            instances = len({i.name for i in main.model.instances})
            print(f"  struct_ops object ({instances} instances for {classes} classes): "
                  f"verified by this kernel ({abi})")
        except libbpf.LibbpfError as e:
            print(f"{checked.source.file}: the kernel rejected the struct_ops object: {e}",
                  file=sys.stderr)
            return EXIT_POLICY
    return EXIT_OK


def cmd_doctor(args) -> int:
    from fpol.runtime.probe import findings

    for f in findings():
        mark = {True: "ok  ", False: "no  ", None: "?   "}[f.ok]
        line = f"{mark}{f.what:<17} {f.detail}"
        if f.follows:
            line += f"  -> {f.follows}"
        print(line)
    return EXIT_OK


def cmd_load(args) -> int:
    from fpol.runtime import libbpf, loader

    what = "fuse_ops"
    try:
        loader.preflight(what)
    except loader.KernelLacks as e:
        print(f"fpol: cannot load: {e}. fuse-bpf is not in mainline Linux; this kernel runs "
              "policies only through `fpol mount` (daemon enforcement). What works here: "
              "fpol verify, fpol explain/test --engine kernel, fpol mount.", file=sys.stderr)
        return EXIT_ENV
    if args.target.endswith(".o"):
        obj_path = args.target
        try:
            name = loader.policy_name_of(obj_path)
        except libbpf.LibbpfError as e:
            why = f"libbpf: {e.reason}" if e.reason else str(e)
            raise UsageError(f"cannot open {obj_path} as a BPF object ({why}); build one "
                             "with `fpol compile`") from None
        if name is None:
            raise UsageError(f"{obj_path} does not look like an fpol struct_ops object")
    else:
        checked = _load_policy(args.target)
        if checked is None:
            return EXIT_POLICY
        from fpol.runtime.objects import build
        from fpol.runtime.probe import credentials_for_load, fuse_ops_abi

        credentials, why = credentials_for_load(args.credentials)
        if checked.policy.has_subjects:
            print(f"fpol: subject conditions: {why}", file=sys.stderr)
        obj_path = build(checked, "struct_ops", abi=fuse_ops_abi(), credentials=credentials).path
        name = checked.policy.name
    try:
        loaded = loader.load(obj_path, name, what)
    except loader.LoadRefused as e:
        print(f"fpol: load refused: {e}", file=sys.stderr)
        return EXIT_POLICY
    except libbpf.LibbpfError as e:
        print(f"fpol: load of {name} failed, nothing left attached or pinned: {e}",
              file=sys.stderr)
        return EXIT_POLICY
    except OSError as e:
        print(f"fpol: load of {name} failed, nothing left attached or pinned: "
              f"{e.filename or loader.PIN_ROOT}: {e.strerror}", file=sys.stderr)
        return EXIT_ENV
    for note in loaded.notes:
        print(f"fpol: {note}", file=sys.stderr)
    print(f"loaded {loaded.policy}: {len(loaded.instances)} instances pinned under {loaded.pin_dir}; "
          f"mount with root_bpf={loaded.instances[0] if loaded.instances else '?'}")
    return EXIT_OK


def cmd_unload(args) -> int:
    from fpol.runtime import loader

    try:
        names = loader.unload(args.name)
    except loader.LoadRefused as e:
        print(f"fpol: {e}", file=sys.stderr)
        return EXIT_POLICY
    print(f"unloaded {args.name}: {len(names)} instances detached")
    return EXIT_OK


def cmd_status(args) -> int:
    from dataclasses import asdict

    from fpol.runtime import loader, registry
    from fpol.runtime.mount import fpol_mounts

    try:
        loaded = loader.status()
    except OSError as e:
        print(f"fpol: cannot list {loader.PIN_ROOT}: {e.strerror} (run as root)",
              file=sys.stderr)
        return EXIT_ENV
    records = {r.mountpoint: r for r in registry.all()}
    mounts = [(state, m, records.get(m.target)) for state, m in fpol_mounts()]
    if getattr(args, "format", "text") == "json":
        print(json.dumps({
            "policies": [{"policy": l.policy, "instances": l.instances, "pin_dir": l.pin_dir}
                         for l in loaded],
            "mounts": [dict({"mountpoint": m.target, "source": m.source, "state": state},
                            **({k: v for k, v in asdict(rec).items()
                                if k not in ("mountpoint", "source")} if rec else {}))
                       for state, m, rec in mounts]}, indent=1))
        return EXIT_OK
    if not loaded:
        print("no policies loaded")
    for l in loaded:
        print(f"{l.policy}: {len(l.instances)} instances ({', '.join(l.instances)}) at {l.pin_dir}")
    if not mounts:
        print("no fpol mounts")
    for state, m, rec in mounts:
        if rec:
            policy = (f"policy {rec.policy} ({rec.policy_path}, {rec.mode}"
                      + (f", daemon pid {rec.pid}" if rec.pid else ", no daemon")
                      + f", since {rec.loaded_at}, sha256 {rec.policy_sha256[:12]}, "
                        f"cache {rec.cache}"
                      + (f", log {rec.log}" if rec.log else "") + ")")
        else:
            policy = f"policy unknown (not in fpol's mount registry, {registry.REGISTRY_DIR})"
        if state == "dead":
            print(f"mount {m.target}: {m.source}, DEAD (its daemon exited; the files on the "
                  f"source are untouched): `fpol umount {m.target}` removes it; {policy}")
        else:
            print(f"mount {m.target}: {m.source}, served; {policy}")
    return EXIT_OK


def _emit_text(text: str, output) -> int:
    if output:
        _write_atomically(output, text.encode("utf-8"))
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_test(args) -> int:
    from fpol.compiler.cases import CaseSyntaxError, parse_cases, run_cases
    from fpol.compiler.explain import request_text

    cases_path = args.cases or os.path.splitext(args.file)[0] + ".cases"
    try:
        with open(cases_path, encoding="utf-8") as f:
            cases = parse_cases(f.read())
    except OSError as e:
        raise UsageError(f"cannot read {cases_path}: {e.strerror or e}") from None
    except CaseSyntaxError as e:
        print(f"{cases_path}:{e.line}: error: {e.message}", file=sys.stderr)
        return EXIT_POLICY
    checked = _load_policy(args.file)
    if checked is None:
        return EXIT_POLICY
    results = run_cases(checked.policy, cases, _engine(args, checked))
    failed = [r for r in results if r.problem and not r.stricter]
    stricter = [r for r in results if r.stricter]
    for r in failed:
        got = r.verdict.decision.short()
        print(f"{cases_path}:{r.case.line}: FAIL {request_text(r.case.request)}: expected "
              f"{r.case.expect.text()}, got {got} ({r.problem})")
    for r in stricter:
        print(f"{cases_path}:{r.case.line}: STRICTER {request_text(r.case.request)}: expected "
              f"{r.case.expect.text()}, the {args.engine} engine says {r.verdict.decision.short()} "
              f"({r.verdict.note})")
    if args.verbose:
        for r in results:
            if not r.problem:
                print(f"{cases_path}:{r.case.line}: ok {r.case.text}")
    print(f"{len(results) - len(failed) - len(stricter)} passed, {len(failed)} failed")
    if stricter:
        print(f"{len(stricter)} decided more strictly by the fuse-bpf realisation, on purpose "
              "(docs/realisation.md)")
    if args.coverage or args.junit:
        from fpol import policy_tools

        policy_tools.test_reports(args, checked, cases_path, results, failed, stricter)
    return EXIT_POLICY if failed else EXIT_OK


# --- parser --------------------------------------------------------------------------

CREDENTIALS_HELP = ("who decides rules with `by` subject conditions in the struct_ops "
                    "object: its programs, reading the requester's fsuid/fsgid (kernel; needs "
                    "bpf_get_current_task_btf: CAP_PERFMON and CONFIG_BPF_EVENTS), or the daemon, "
                    "to which ops whose decision depends on who asks are sent instead (daemon)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpol",
        description="Compile .fpol filesystem policies into fuse-bpf programs, "
                    "explain and test their decisions, and enforce them.",
        epilog="Exit codes: 0 ok, 1 policy errors or failed expectations, 2 usage, "
               "3 missing kernel feature or tool. `fpol COMMAND --help` for each command.",
    )
    p.add_argument("--version", action="version", version=f"fpol {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("check", help="report errors and warnings in policies",
                       description="Parse and analyse policies; report every error and warning "
                                   "as file:line:col with the source line and a hint.")
    c.add_argument("files", nargs="+", metavar="FILE", help="policy files (- for standard input)")
    c.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default) or a JSON list of diagnostics on stdout")
    c.add_argument("--no-daemon", action="store_true",
                   help="check for a daemon-less (no_daemon) fuse-bpf mount: redirects are errors")
    c.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    c.set_defaults(func=cmd_check)

    f = sub.add_parser("fmt", help="print policies in canonical form",
                       description="Print the canonical form of policies (comments kept; "
                                   "idempotent). Without options the result goes to stdout.")
    f.add_argument("files", nargs="+", metavar="FILE", help="policy files (- for standard input)")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a file is not in canonical form")
    g.add_argument("--write", action="store_true", help="rewrite the files in place")
    f.set_defaults(func=cmd_fmt)

    co = sub.add_parser("compile", help="compile a policy to fuse-bpf objects (or show a stage)",
                        description="Compile a policy into OUT.bpf.o (struct_ops instances for "
                                    "fuse-bpf kernels) and OUT.check.bpf.o (the same logic as "
                                    "syscall programs, for verification and tests), or print one "
                                    "stage of the pipeline with --emit.")
    co.add_argument("file", metavar="FILE", help="the policy")
    co.add_argument("-o", "--output", metavar="OUT",
                    help="output file (objects: OUT.bpf.o and OUT.check.bpf.o; default "
                         "POLICY.bpf.o); text stages go to stdout without -o")
    co.add_argument("--emit", choices=("ast", "policy", "classes", "dot", "c", "check-c", "obj"),
                    default="obj", help="what to produce (default obj)")
    co.add_argument("--abi", choices=("v3", "v4"), help="override the policy's `abi` statement")
    co.add_argument("--credentials", choices=CREDENTIALS, default="kernel",
                    help=CREDENTIALS_HELP + " (default kernel)")
    co.set_defaults(func=cmd_compile)

    v = sub.add_parser("verify", help="prove a policy's generated logic in this kernel's verifier",
                       description="Build the policy's check object (the generated decision logic "
                                   "as syscall programs) and load it into this kernel: prints the "
                                   "verifier's instruction counts and the load time, or the "
                                   "verifier log mapped back to the policy rule.")
    v.add_argument("file", metavar="FILE", help="the policy")
    v.add_argument("--abi", choices=("v3", "v4"), help="override the policy's `abi`")
    v.add_argument("--credentials", choices=CREDENTIALS, default="kernel",
                   help=CREDENTIALS_HELP + " (default kernel)")
    v.set_defaults(func=cmd_verify)

    d = sub.add_parser("doctor", help="what this machine supports",
                       description="One line per capability fpol uses (BTF, struct fuse_ops, "
                                   "CAP_BPF, bpffs, /dev/fuse, FUSE passthrough, clang, libbpf) "
                                   "and what follows from it.")
    d.set_defaults(func=cmd_doctor)

    lo = sub.add_parser("load", help="attach a policy's fuse_ops instances (fuse-bpf kernels)",
                        description="Attach every fuse_ops instance of a policy (all or none) and "
                                    "pin them under /sys/fs/bpf/fpol/NAME/. On a kernel without "
                                    "struct fuse_ops this exits 3 before loading anything.")
    lo.add_argument("target", metavar="FILE|OBJ", help="a policy, or an object from fpol compile")
    lo.add_argument("--credentials", choices=CREDENTIALS,
                    help=CREDENTIALS_HELP + " (default: kernel where this kernel lets programs "
                         "call bpf_get_current_task_btf, else daemon)")
    lo.set_defaults(func=cmd_load)

    un = sub.add_parser("unload", help="detach a loaded policy",
                        description="Detach every instance of a loaded policy and remove its pins.")
    un.add_argument("name", metavar="NAME", help="the policy name (see fpol status)")
    un.set_defaults(func=cmd_unload)

    st = sub.add_parser("status", help="list loaded policies and fpol mounts",
                        description="List the policies pinned under /sys/fs/bpf/fpol/ and the "
                                    "fpol mounts (policy, sha256, since when, cache mode, log), "
                                    "marking a mount whose daemon died as DEAD.")
    st.add_argument("--format", choices=("text", "json"), default="text")
    st.set_defaults(func=cmd_status)

    from fpol.runtime.mount import (add_mount_arguments, add_umount_arguments,
                                    run_mount_command, run_umount_command)

    mo = sub.add_parser("mount", help="enforce a policy on a FUSE mount of a directory",
                        description="Mount SOURCE at MOUNTPOINT through a FUSE daemon that "
                                    "enforces the policy: every request is decided by the policy's "
                                    "classes before it reaches SOURCE; allowed opens are handed to "
                                    "the kernel with FUSE passthrough. Runs in the background "
                                    "unless --foreground; `fpol umount` stops it.")
    add_mount_arguments(mo)
    mo.set_defaults(func=run_mount_command)
    um = sub.add_parser("umount", help="unmount an fpol mount (a dead one too)",
                        description="Unmount an fpol mount and stop its daemon; also clears a "
                                    "mount whose daemon died.")
    add_umount_arguments(um)
    um.set_defaults(func=run_umount_command)
    from fpol.runtime import reload as reload_cmd

    rl = sub.add_parser("reload", help="swap the policy of a live fpol mount, no remount",
                        description="Check POLICY and make the daemon of MOUNTPOINT enforce it "
                                    "from the next request on, dropping the kernel's caches. A "
                                    "policy with errors is refused and the old one stays.")
    reload_cmd.add_arguments(rl)
    rl.set_defaults(func=reload_cmd.run_command)

    e = sub.add_parser("explain", help="what happens to one request, and which rule decides",
                       description="Decide one request against a policy and name the deciding rule.",
                       epilog="Examples: fpol explain secrets.fpol --op open --path /secret/k "
                              "--flags O_WRONLY|O_TRUNC;  fpol explain p.fpol --op rename "
                              "--path /a/x --to /b/x;  fpol explain srv.fpol --op write "
                              "--path /srv/db/x --uid 34 --gid 34")
    e.add_argument("file", metavar="FILE", help="the policy")
    e.add_argument("--op", required=True, help="a single op: open, write, rename, lookup, ...")
    e.add_argument("--path", required=True, help="the object's path inside the mount, e.g. /secret/k")
    e.add_argument("--to", help="destination path, for rename, link and copy_file_range")
    e.add_argument("--flags", help="open flags for open/create, e.g. O_WRONLY|O_TRUNC "
                                   "(default O_RDONLY; O_WRONLY for create)")
    e.add_argument("--mask", help="access mask for access: letters r, w, x (default: none, F_OK)")
    e.add_argument("--uid", metavar="N", help="the requester's (filesystem) uid, for rules with "
                                             "`by` lists (default 0)")
    e.add_argument("--gid", metavar="N", help="the requester's (filesystem) gid (default 0)")
    e.add_argument("--format", choices=("text", "json"), default="text")
    e.add_argument("--engine", choices=("python", "kernel"), default="python",
                   help="python: the reference evaluator (default); kernel: the compiled check "
                        "programs run in this kernel through BPF_PROG_TEST_RUN")
    e.set_defaults(func=cmd_explain)

    t = sub.add_parser("test", help="run a table of expected decisions",
                       description="Check a case table (default: the .cases file beside the "
                                   "policy) and print a line per failing case and a summary "
                                   "`N passed, N failed`. Case format: docs/cli.md.")
    t.add_argument("file", metavar="FILE", help="the policy")
    t.add_argument("cases", nargs="?", metavar="CASES", help="the case table (default FILE.cases)")
    t.add_argument("--engine", choices=("python", "kernel"), default="python",
                   help="python: the reference evaluator (default); kernel: the check programs")
    t.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    from fpol import policy_tools  # diff, learn, test --coverage/--junit (issue 17)

    policy_tools.add_test_arguments(t)
    t.set_defaults(func=cmd_test)

    from fpol import policy_tools  # diff, learn (issue 17)

    policy_tools.add_parsers(sub)

    from fpol import completion

    cm = sub.add_parser("completion", help="print a shell completion script (bash, zsh, fish)",
                        description="Print a completion script for SHELL, generated from this "
                                    "command line: `source <(fpol completion bash)`, or install "
                                    "it where the shell looks (docs/cli.md).")
    completion.add_arguments(cm)
    cm.set_defaults(func=completion.run_command)

    def run_lsp(args):
        from fpol.lsp import run_command  # pygls and lsprotocol: the `lsp` extra

        return run_command(args)

    ls = sub.add_parser("lsp", help="run the language server (LSP over stdio) for editors",
                        description="Serve the Language Server Protocol on standard input and "
                                    "output: diagnostics as you type, hover, completion, "
                                    "formatting and quick fixes for .fpol files. Editors start "
                                    "it; it needs fpol[lsp] (pygls).")
    ls.add_argument("--stdio", action="store_true",
                    help="talk over standard input and output (the default and only transport; "
                         "accepted because editors pass it)")
    ls.set_defaults(func=run_lsp)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from fpol.compiler.driver import few_collections

    try:
        with few_collections():
            return args.func(args)
    except FpolError as e:  # every error of fpol's own: one message, its exit code
        print(f"fpol: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `fpol ... | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
