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
from .paths import ANY, Pattern, show_pattern

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
class Subject:
    """One `by` alternative (LANGUAGE.md §6): the requester's fsuid or fsgid in [low, high].
    `user NAME` and `group NAME` are resolved to a point when the policy is checked."""

    kind: str  # uid | gid
    low: int
    high: int
    text: str  # as written, canonical: `uid 5`, `uid 10000-19999`, `user backup`

    def holds(self, uid: int, gid: int) -> bool:
        value = uid if self.kind == "uid" else gid
        return self.low <= value <= self.high

    def numeric(self) -> str:
        """`uid 34` for `user backup` (what `--emit policy` shows)."""
        span = str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        return f"{self.kind} {span}"


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
    # `by ...`: the rule applies when the requester matches any of these; () means everyone.
    subjects: tuple[Subject, ...] = ()
    # `except by ...`: the rule does not apply to a requester matching any of these.
    except_subjects: tuple[Subject, ...] = ()

    @property
    def has_subject(self) -> bool:
        """Does whether the rule applies depend on who is asking?"""
        return bool(self.subjects or self.except_subjects)

    def applies_to(self, uid: int, gid: int) -> bool:
        """The rule's subject condition (its scopes aside) for requester `uid`, `gid`."""
        if self.subjects and not any(s.holds(uid, gid) for s in self.subjects):
            return False
        return not any(s.holds(uid, gid) for s in self.except_subjects)

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
    def has_subjects(self) -> bool:
        """Does any rule depend on who is asking (LANGUAGE.md §6)?"""
        return any(r.has_subject for r in self.rules)

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
            if r.subjects:
                out.append("  by " + ", ".join(s.numeric() for s in r.subjects))
            if r.except_subjects:
                out.append("  except by " + ", ".join(s.numeric() for s in r.except_subjects))
        return "\n".join(out) + "\n"


def pattern_specificity(pattern: Pattern) -> int:
    """Literal components count 2, globbed ones 1, `**` 0; an exact (no `**`) pattern gets +1."""
    weight, exact = 0, 1
    for part in pattern:
        if part is ANY:
            exact = 0
        else:
            weight += 2 if isinstance(part, bytes) else 1
    return weight + exact
