"""The resolved policy: what the analyser makes of a PolicyFile.

Ops are expanded to atoms, paths normalised into patterns, errnos resolved. This
is the input of both the class-tree builder and the reference evaluator, and it
prints itself for `fpol compile --emit policy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from . import ops as opsmod
from .diagnostics import Span
from .paths import ANY, Part, Pattern, show_pattern

ALLOW, DENY, USERSPACE = "allow", "deny", "userspace"
# Strictness order: deny > userspace > allow.
STRICTNESS = {ALLOW: 0, USERSPACE: 1, DENY: 2}


@dataclass(frozen=True)
class Term:
    """One scope term: the set of paths matched by any of its patterns."""

    kind: str  # under | at | matching | named
    patterns: tuple[Pattern, ...]
    text: str  # canonical source text, e.g. `under /secret`
    specificity: int


@dataclass(frozen=True)
class Rule:
    index: int  # position among the policy's rules (0-based)
    line: int
    span: Span
    text: str  # canonical source text
    action: str  # allow | deny | audit | redirect
    atoms: frozenset[str]
    mode: Optional[str]  # instead | before | after, for redirect
    errno: Optional[str]  # symbolic, for deny
    terms: tuple[Term, ...]  # all must hold
    excepts: tuple[Term, ...]  # none may hold
    specificity: int
    file: str = ""  # the file the rule is written in (an included one, or the top file)
    # One of the rules a statement over a several-valued definition stands for.
    expanded: bool = False

    @property
    def decision(self) -> Optional[str]:
        return {"allow": ALLOW, "deny": DENY, "redirect": USERSPACE}.get(self.action)

    def label(self, file: str) -> str:
        return f"{file}:{self.line} {self.text}"


@dataclass(frozen=True)
class Default:
    decision: str  # allow | deny | userspace
    errno: Optional[str]
    line: Optional[int]  # None when the policy has no `default` statement
    text: str


@dataclass(frozen=True)
class Policy:
    file: str
    name: str
    abi: str
    mode: str  # enforce | complain
    default: Default
    case_insensitive: bool
    rules: tuple[Rule, ...]

    @property
    def needs_daemon(self) -> bool:
        return self.default.decision == USERSPACE or any(r.action == "redirect" for r in self.rules)

    def dump(self) -> str:
        out = [
            f"policy {self.name}",
            f"abi {self.abi}",
            f"mode {self.mode}",
            f"default {self.default.text}",
            f"names {'case-insensitive' if self.case_insensitive else 'case-sensitive'}",
        ]
        for r in self.rules:
            out.append(f"rule {r.index} (line {r.line}): {r.text}")
            out.append(f"  action {r.action}" + (f" {r.errno}" if r.errno else "")
                       + (f" userspace {r.mode}" if r.mode else ""))
            out.append(f"  specificity {r.specificity}")
            out.append("  ops " + ", ".join(sorted(r.atoms, key=opsmod.ATOMS.index)))
            for t in r.terms:
                out.append(f"  scope {t.text}: " + " | ".join(show_pattern(p) for p in t.patterns))
            for t in r.excepts:
                out.append(f"  except {t.text}: " + " | ".join(show_pattern(p) for p in t.patterns))
        return "\n".join(out) + "\n"


def part_weight(part: Part) -> int:
    if part is ANY:
        return 0
    return 2 if isinstance(part, bytes) else 1


def pattern_specificity(pattern: Pattern) -> int:
    """Literal components count 2, globbed ones 1, `**` 0; an exact (no `**`) pattern gets +1."""
    return sum(part_weight(p) for p in pattern) + (0 if ANY in pattern else 1)
