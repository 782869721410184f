"""The reference evaluator: LANGUAGE.md §2 computed directly from the Policy.

It matches each rule's patterns against the request's path by plain NFA
simulation and never looks at the class tree, so it can serve as the oracle
for the class tree, the generated C, the kernel engine and the mount.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from . import automaton, moves, ops
from .decide import Decision, combine, decide
from .paths import glob_witnesses, normalise_path
from .policy import DENY, Policy, Rule


@dataclass(frozen=True)
class Request:
    op: str
    path: tuple[bytes, ...]
    to: Optional[tuple[bytes, ...]] = None
    flags: int = 0
    mask: int = 0
    uid: int = 0  # who is asking: the requester's fsuid and fsgid (LANGUAGE.md §6)
    gid: int = 0


@dataclass(frozen=True)
class Verdict:
    request: Request
    decision: Decision
    # Set when rename/link was refused by "no gain by moving".
    exdev: bool = False
    exdev_atom: Optional[str] = None
    exdev_suffix: Optional[tuple[bytes, ...]] = None
    lost_rule: Optional[int] = None  # the source-side rule the move would have escaped
    # Engines other than the evaluator: why a realisation decided differently, and the
    # classes it found (object, destination).
    note: Optional[str] = None
    classes: tuple = ()

    @property
    def kind(self) -> str:
        return self.decision.kind

    @property
    def errno(self) -> Optional[str]:
        return self.decision.errno

    @property
    def mode(self) -> Optional[str]:
        return self.decision.mode


def parse_path(text: "str | bytes") -> tuple[bytes, ...]:
    """A request path (`/a/b`) -> components."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return normalise_path(raw)


class Evaluator:
    def __init__(self, policy: Policy):
        self.policy = policy
        self._enforcing: Optional["Evaluator"] = None
        self.fold = policy.case_insensitive
        self.nfa = automaton.collect(policy)

    # --- path matching (the NFA of compiler/automaton.py, run directly) ----------------------

    def walk(self, path: tuple[bytes, ...], positions: Optional[frozenset] = None) -> frozenset:
        positions = self.nfa.start() if positions is None else positions
        for name in path:
            positions = self.step(positions, name)
        return positions

    def step(self, positions: frozenset, name: bytes) -> frozenset:
        return self.nfa.step(positions, automaton.fold_name(name, self.fold))

    def matching(self, positions: frozenset) -> list[Rule]:
        """The rules whose scopes and excepts hold at these positions (subjects aside)."""
        return automaton.rules_holding(self.policy, self.nfa.accepted(positions))

    def names(self, positions: frozenset) -> list[bytes]:
        """One name for each way the patterns at these positions can tell a child apart."""
        literals, globs = self.nfa.next_parts(positions)
        return sorted(literals) + glob_witnesses(sorted(globs), frozenset(literals))

    def rules_at(self, path: tuple[bytes, ...], uid: int = 0, gid: int = 0) -> list[Rule]:
        """The rules that match `path` (scopes and excepts) and requester `uid`, `gid`."""
        return [r for r in self.matching(self.walk(path)) if r.applies_to(uid, gid)]

    def decision_at(self, path: tuple[bytes, ...], atom: str, uid: int = 0, gid: int = 0) -> Decision:
        return decide(self.policy, atom, self.rules_at(path, uid, gid))

    # --- requests ----------------------------------------------------------------------

    def evaluate(self, req: Request) -> Verdict:
        """The request's decision. In `mode complain` the whole request is judged as if
        enforced, then a deny (by a rule or by "no gain by moving") becomes allow + audit."""
        if self.policy.mode != "complain":
            return self._evaluate(req)
        if self._enforcing is None:
            self._enforcing = Evaluator(replace(self.policy, mode="enforce"))
        v = self._enforcing._evaluate(req)
        d = v.decision
        if d.kind != "deny":
            return v
        return replace(v, decision=Decision("allow", audit=True, rules=d.rules,
                                            audit_rules=d.audit_rules, complained=True,
                                            complained_errno=d.errno))

    def _evaluate(self, req: Request) -> Verdict:
        atoms = ops.request_atoms(req.op, req.flags, req.mask)
        first = self.decision_at(req.path, atoms.source, req.uid, req.gid)
        if atoms.destination is None:
            return Verdict(req, first)
        if req.to is None:
            raise ValueError(f"{req.op} needs a destination path")
        second = self.decision_at(req.to, atoms.destination, req.uid, req.gid)
        combined = combine(first, second)
        if req.op == "copy_file_range" or combined.kind != "allow":
            return Verdict(req, combined)
        gain = moves.gain(self, req.path, req.to, req.op == "rename", req.uid, req.gid)
        if gain is None:
            return Verdict(req, combined)
        atom, suffix, lost = gain
        refused = Decision(DENY, errno="EXDEV", audit=combined.audit,
                           audit_rules=combined.audit_rules)
        return Verdict(req, refused, exdev=True, exdev_atom=atom, exdev_suffix=suffix,
                       lost_rule=lost)
