"""Policy engineering commands: `fpol diff` and `fpol learn` (issue 17).

Kept out of fpol/cli.py, which only registers them (`add_parsers`)."""

from __future__ import annotations

import json
import sys

EXIT_OK, EXIT_DIFFER, EXIT_USAGE = 0, 1, 2


def _load(path: str):
    """A checked policy, or None after printing its diagnostics."""
    from fpol.cli import _display_name, _print_diagnostics, _read
    from fpol.compiler.driver import check

    checked = check(_read(path), _display_name(path))
    if not checked.ok:
        _print_diagnostics([checked], "text")
        print(f"fpol: {_display_name(path)}: not compared: fix the errors above first",
              file=sys.stderr)
        return None
    return checked


def cmd_diff(args) -> int:
    from fpol.compiler.diff import diff, to_json_obj, to_text

    if args.limit < 1:
        from fpol.cli import UsageError

        raise UsageError("--limit must be at least 1")
    old, new = _load(args.old), _load(args.new)
    if old is None or new is None:
        return EXIT_USAGE
    result = diff(old.classes, new.classes)
    if args.format == "json":
        print(json.dumps(to_json_obj(result, args.limit), indent=2, ensure_ascii=False))
    else:
        print(to_text(result, args.limit))
    return EXIT_OK if result.equivalent else EXIT_DIFFER


def add_parsers(sub) -> None:
    d = sub.add_parser(
        "diff", help="the exact difference of two policies' decisions",
        description="Compare two policies on their class automata (a product walk, exact, not "
                    "sampled): for each place where some op is decided differently, the "
                    "shortest path, the ops, and the old and new decision with the rule "
                    "deciding each; then a summary line. Exit 0 when the policies are "
                    "equivalent, 1 when they differ, 2 on usage errors or a policy with errors.")
    d.add_argument("old", metavar="OLD", help="the old policy")
    d.add_argument("new", metavar="NEW", help="the new policy")
    d.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (default), or one JSON object: equivalent, differences "
                        "(each with old and new shaped like `fpol explain --format json`)")
    d.add_argument("--limit", type=int, default=20, metavar="N",
                   help="show at most N differences, shortest paths first (default 20); the "
                        "summary counts all")
    d.set_defaults(func=cmd_diff)
    add_learn_parser(sub)


def cmd_learn(args) -> int:
    import os

    from fpol.cli import UsageError, _display_name, _read, _write_atomically
    from fpol.compiler.diff import diff, summary
    from fpol.compiler.driver import check
    from fpol.compiler.learn import LogError, propose, read_log

    log_name = _display_name(args.audit)
    data = _read(args.audit)
    try:
        log = read_log(data.decode("utf-8", "surrogateescape"))
    except LogError as e:
        print(f"{log_name}:{e.line}:{e.column}: error: {e.message}", file=sys.stderr)
        print("  = hint: fpol learn reads the JSON lines of an fpol audit log "
              "(docs/cli.md, \"Audit log\")", file=sys.stderr)
        return EXIT_USAGE
    if args.policy == "-":
        raise UsageError("--policy must name a file (learn may rewrite it)")
    old = _load(args.policy)
    if old is None:
        return EXIT_USAGE
    by_path = {u.where: u.file for u in old.units}
    last: list = [None]  # what recheck last checked

    def recheck(texts: dict[str, str]):
        def reader(path: str) -> bytes:
            name = by_path.get(os.path.abspath(path))
            if name is not None and name in texts:
                return texts[name].encode("utf-8", "surrogateescape")
            with open(path, "rb") as f:
                return f.read()

        top = old.units[0]
        result = check(texts[top.file].encode("utf-8", "surrogateescape"), top.file,
                       origin=top.where, reader=reader)
        last[0] = result
        return result.policy if result.ok else None

    proposal = propose(old.policy, old.units, log, args.widen, os.path.basename(log_name), recheck)
    refused = len(proposal.covered) + len(proposal.unresolved)
    for number in log.skipped_unknown_path:
        print(f"{log_name}:{number}: note: skipped: the daemon could not name the path",
              file=sys.stderr)
    for entry, why in proposal.unresolved:
        print(f"{log_name}:{entry.line}: warning: {entry.text()}: not learned: {why}",
              file=sys.stderr)
    if not refused:
        print(f"nothing to learn: {len(log.entries)} refused request(s) in {log_name}, all "
              f"allowed by {old.source.file} as it is now")
        return EXIT_OK
    text = proposal.unified_diff()
    sys.stdout.write(text)
    if text:
        final = recheck({f: new for f, (_, new) in proposal.files.items()})
        checked = last[0]
        if final is None or checked is None or checked.classes is None:
            print("fpol: the proposed policy does not check; not applied", file=sys.stderr)
            return EXIT_DIFFER
        result = diff(old.classes, checked.classes)
        print(f"fpol diff {old.source.file} (proposed): {summary(result)}")
    print(f"{len(proposal.covered)} of {refused} refused request(s) in {log_name} allowed by the "
          f"proposal ({proposal.added} rule(s) added, {proposal.changed} rule(s) given an except; "
          f"--widen {args.widen})")
    if args.write and text:
        for u in old.units:
            old_text, new_text = proposal.files[u.file]
            if old_text != new_text:
                _write_atomically(u.where, new_text.encode("utf-8", "surrogateescape"))
                print(f"wrote {u.file}", file=sys.stderr)
    return EXIT_DIFFER if proposal.unresolved else EXIT_OK


def add_learn_parser(sub) -> None:
    le = sub.add_parser(
        "learn", help="propose the policy change a (complain-mode) audit log asks for",
        description="Read an fpol audit log (JSON lines) and propose the smallest change to "
                    "POLICY that lets every logged request it denies go through: a unified "
                    "diff adding allow rules (under `default deny`) or excepts to the deny "
                    "rules that refuse them, each line citing how many log lines it covers, "
                    "then the `fpol diff` summary of the old policy against the proposal. "
                    "Exit 0 when every refused request is covered, 1 when some cannot be "
                    "(\"no gain by moving\"), 2 on usage errors.")
    le.add_argument("audit", metavar="AUDIT", help="the audit log (JSON lines; - for stdin)")
    le.add_argument("--policy", required=True, metavar="POLICY", help="the policy to change")
    le.add_argument("--widen", choices=("exact", "dir", "name"), default="dir",
                    help="exact: the logged paths; dir (default): the directories holding "
                         "them; name: a `named` glob from the logged names' common suffix, "
                         "in their directory")
    le.add_argument("--write", action="store_true", help="apply the change to the policy file(s)")
    le.set_defaults(func=cmd_learn)


# --- fpol test --coverage / --junit ---------------------------------------------------------

def coverage(policy, results) -> tuple[dict[int, set[str]], set[int]]:
    """Per rule, the op groups of the cases it decided or audited (judged by the reference
    evaluator, end by end), and the rules a refused move escaped ("no gain by moving")."""
    from fpol.compiler import ops
    from fpol.compiler.diff import atom_groups
    from fpol.compiler.evaluate import Evaluator

    ev = Evaluator(policy)
    used: dict[int, set[str]] = {}
    escaped: set[int] = set()
    for r in results:
        req = r.case.request
        atoms = ops.request_atoms(req.op, req.flags, req.mask)
        ends = [(req.path, atoms.source)]
        if atoms.destination is not None and req.to is not None:
            ends.append((req.to, atoms.destination))
        for path, atom in ends:
            d = ev.decision_at(path, atom, req.uid, req.gid)  # for the case's requester
            for i in d.rules + d.audit_rules:
                used.setdefault(i, set()).update(atom_groups(atom))
        if r.verdict.lost_rule is not None:
            escaped.add(r.verdict.lost_rule)
    return used, escaped


def coverage_text(policy, results) -> str:
    from fpol.compiler.diff import _group_order

    used, escaped = coverage(policy, results)
    rules = policy.rules
    decided = [r for r in rules if r.index in used or r.index in escaped]
    out = [f"coverage: {len(decided)} of {len(rules)} rules decided or audited some case"]
    for r in rules:
        where = f"{r.file or policy.file}:{r.line}"
        if r.index in used or r.index in escaped:
            groups = sorted(used.get(r.index, ()), key=_group_order)
            if r.index in escaped:
                groups.append("no gain by moving")
            out.append(f"  {where} {r.text}: {', '.join(groups)}")
    never = [r for r in rules if r not in decided]
    if never:
        out.append(f"rules that decided no case ({len(never)}):")
        for r in never:
            out.append(f"  {r.file or policy.file}:{r.line} {r.text}")
    return "\n".join(out)


def junit_xml(policy_file: str, cases_path: str, results, failed, stricter, engine: str) -> bytes:
    import xml.etree.ElementTree as ET

    from fpol.compiler.explain import request_text

    suite = ET.Element("testsuite", {
        "name": f"fpol test {policy_file}", "tests": str(len(results)),
        "failures": str(len(failed)), "errors": "0", "skipped": "0",
    })
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", {"name": "engine", "value": engine})
    ET.SubElement(props, "property", {"name": "cases", "value": cases_path})
    failed_ids = {id(r) for r in failed}
    stricter_ids = {id(r) for r in stricter}
    for r in results:
        case = ET.SubElement(suite, "testcase", {
            "classname": policy_file, "name": " ".join(r.case.text.split()),
            "file": cases_path, "line": str(r.case.line)})
        got = r.verdict.decision.short()
        if id(r) in failed_ids:
            message = (f"{request_text(r.case.request)}: expected {r.case.expect.text()}, "
                       f"got {got} ({r.problem})")
            failure = ET.SubElement(case, "failure", {"message": message, "type": "decision"})
            failure.text = f"{cases_path}:{r.case.line}: {message}"
        elif id(r) in stricter_ids:
            out = ET.SubElement(case, "system-out")
            out.text = (f"decided more strictly by the {engine} engine, on purpose: {got} "
                        f"({r.verdict.note})")
    ET.indent(suite)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="utf-8") + b"\n"


def test_reports(args, checked, cases_path: str, results, failed, stricter) -> None:
    """`fpol test --coverage` and `--junit FILE` (called by cmd_test after the run)."""
    if getattr(args, "coverage", False):
        print(coverage_text(checked.policy, results))
    junit = getattr(args, "junit", None)
    if junit:
        from fpol.cli import UsageError, _write_atomically

        data = junit_xml(checked.source.file, cases_path, results, failed, stricter, args.engine)
        try:
            if junit == "-":
                sys.stdout.write(data.decode("utf-8"))
            else:
                _write_atomically(junit, data)
        except OSError as e:
            raise UsageError(f"cannot write {junit}: {e.strerror or e}") from None


def add_test_arguments(t) -> None:
    t.add_argument("--coverage", action="store_true",
                   help="after the run, list per rule the op groups of the cases it decided "
                        "or audited, and the rules that decided no case")
    t.add_argument("--junit", metavar="FILE",
                   help="also write the results as JUnit XML to FILE (- for stdout), for CI")
