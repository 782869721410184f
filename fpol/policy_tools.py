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
