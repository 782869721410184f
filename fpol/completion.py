"""`fpol completion bash|zsh|fish`: shell completion scripts generated from the command
line parser itself (shtab), so every command, option and choice the parser knows completes,
and nothing else. Policy, case and object arguments complete file names; mount sources and
mount points complete directories.
"""

from __future__ import annotations

import argparse
import sys

SHELLS = ("bash", "zsh", "fish")

# metavar -> what the shell should offer for it (shtab's FILE or DIRECTORY)
_FILES = {"FILE", "POLICY", "CASES", "FILE|OBJ", "OUT"}
_DIRECTORIES = {"SOURCE", "MOUNTPOINT"}


def _mark_paths(parser: argparse.ArgumentParser, shtab) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _mark_paths(sub, shtab)
        # shtab reads `complete`, an attribute it adds to argparse's actions.
        elif action.metavar in _FILES:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.metavar in _DIRECTORIES:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]


def script(shell: str) -> str:
    """The completion script for `shell` (one of SHELLS)."""
    import shtab

    from fpol.cli import build_parser

    parser = build_parser()
    _mark_paths(parser, shtab)
    return shtab.complete(parser, shell=shell, root_prefix="fpol")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=SHELLS, help="the shell to complete for")


def run_command(args) -> int:
    try:
        text = script(args.shell)
    except ImportError:
        print("fpol: completion needs the shtab package (pip install shtab)", file=sys.stderr)
        return 3
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
