"""The exact semantic difference of two policies (`fpol diff OLD NEW`).

Both policies are compiled to class trees; `product.product_walk` visits every pair of
classes (one of each tree) that some path reaches in both, breadth first from the two roots,
so each pair is met first by one of its shortest paths. From a pair it follows every name the
two trees tell apart (`product.names`: the literal names of either class, one witness name
for each realisable combination of their name globs, and so also "any other name"). Two
policies decide every request alike exactly when every reachable pair has equal decision
tables (a rename's or link's EXDEV is a function of those tables too), so the walk is exact,
not sampled.

Who is asking (LANGUAGE.md §6) is a second axis: each policy cuts the uid and gid spaces
into its own subject classes, and `subject_pairs` cuts them at the bounds of both, so each
pair of subject classes some requester falls in is compared, with such a requester.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from . import ops
from .classes import ClassTree
from .decide import Decision
from .evaluate import Request, Verdict
from .explain import show_path, to_json
from .policy import Policy
from .product import Path, product_walk


# --- who is asking ----------------------------------------------------------------------

def subject_pairs(a: ClassTree, b: ClassTree) -> list[tuple[int, int, int, int]]:
    """(subject class in a, subject class in b, uid, gid) for every pair some requester is
    in, with the first such requester (ids in increasing order)."""
    pa, pb = a.subjects, b.subjects
    uids = sorted(set(pa.uid_starts) | set(pb.uid_starts))
    gids = sorted(set(pa.gid_starts) | set(pb.gid_starts))
    found: dict[tuple[int, int], tuple[int, int]] = {}
    for uid in uids:
        for gid in gids:
            found.setdefault((pa.classify(uid, gid), pb.classify(uid, gid)), (uid, gid))
    return [(sa, sb, uid, gid) for (sa, sb), (uid, gid) in found.items()]


# --- differences ---------------------------------------------------------------------------

def effect(d: Decision) -> tuple:
    """What a request sees of a decision (not which rule made it): decide.Decision.effect."""
    return d.effect


def atom_groups(atom: str) -> tuple[str, ...]:
    """The op groups an atom belongs to (its op's name for lookup and the handle ops,
    which are in no group but `all`)."""
    groups = [g for g in ops.GROUPS if g != "all" and g in ops.SELECTORS[atom]]
    return tuple(groups) or (ops.atom_op(atom),)


_ORDER: dict[str, int] = {}
for _name in ops.GROUPS + ops.SINGLE_OPS:  # groups first, then the ops only `all` covers
    _ORDER.setdefault(_name, len(_ORDER))


def _group_order(name: str) -> int:
    return _ORDER.get(name, len(_ORDER))


def atom_request(atom: str, path: Path) -> tuple[Request, str]:
    """A request judged as `atom` at `path`, and which end of it `path` is (object,
    source or destination)."""
    op, _, detail = atom.partition(":")
    if op == "open":
        acc = {"r": ops.O_RDONLY, "w": ops.O_WRONLY, "rw": ops.O_RDWR}[detail.replace("x", "")]
        flags = acc | (ops.FMODE_EXEC if "x" in detail else 0)
        return Request("open", path, flags=flags), "object"
    if op == "create":
        flags = (ops.O_RDWR if detail == "rw" else ops.O_WRONLY) | ops.OPEN_FLAGS["O_CREAT"]
        return Request("create", path, flags=flags), "object"
    if op == "access":
        mask = (ops.MAY_READ if "r" in detail else 0) | (ops.MAY_WRITE if "w" in detail else 0) \
            | (ops.MAY_EXEC if "x" in detail else 0)
        return Request("access", path, mask=mask), "object"
    if detail in ("src", "dst"):
        return Request(op, path), "source" if detail == "src" else "destination"
    return Request(op, path), "object"


@dataclass
class Difference:
    """One place where the two policies decide some atoms differently: a pair of classes,
    the shortest path that reaches it, and the atoms (grouped: one Difference per distinct
    pair of old and new decisions at that place)."""

    path: Path
    atoms: tuple[str, ...]
    old: Decision
    new: Decision
    # Who sees the difference, when either policy has subject conditions: the requesters
    # (uid, gid), one per pair of subject classes, in which it shows.
    requesters: tuple[tuple[int, int], ...] = ()

    @property
    def groups(self) -> tuple[str, ...]:
        out: dict[str, None] = {}
        for a in self.atoms:
            out.update(dict.fromkeys(atom_groups(a)))
        return tuple(sorted(out, key=_group_order))

    def request(self) -> tuple[Request, str]:
        req, end = atom_request(self.atoms[0], self.path)
        if self.requesters:
            uid, gid = self.requesters[0]
            req = replace(req, uid=uid, gid=gid)
        return req, end


@dataclass
class DiffResult:
    old: Policy
    new: Policy
    differences: list[Difference] = field(default_factory=list)
    pairs: int = 0  # class pairs compared

    @property
    def equivalent(self) -> bool:
        return not self.differences

    @property
    def groups(self) -> dict[str, list[Path]]:
        """op group -> the paths where it differs, shortest first."""
        out: dict[str, list[Path]] = {}
        for d in self.differences:
            for g in d.groups:
                paths = out.setdefault(g, [])
                if d.path not in paths:
                    paths.append(d.path)
        return dict(sorted(out.items(), key=lambda kv: _group_order(kv[0])))

    @property
    def places(self) -> int:
        return len({d.path for d in self.differences})


def diff(old: ClassTree, new: ClassTree) -> DiffResult:
    """Every place (pair of classes) where the two policies decide some atom differently."""
    result = DiffResult(old.policy, new.policy)
    subjects = subject_pairs(old, new)
    by_subject = len(old.subjects) > 1 or len(new.subjects) > 1
    for path, ca, cb in product_walk(old, new):
        result.pairs += 1
        if ca.table == cb.table and len(old.subjects) == len(new.subjects) == 1:
            continue
        # One Difference per (decision pair, atoms), with every requester it shows to.
        found: dict[tuple, list[tuple[int, int]]] = {}
        decisions: dict[tuple, tuple[Decision, Decision]] = {}
        for sa, sb, uid, gid in subjects:
            by_pair: dict[tuple, list[str]] = {}
            for atom, da, db in zip(ops.ATOMS, ca.table.for_subject(sa), cb.table.for_subject(sb)):
                ea, eb = effect(da), effect(db)
                if ea != eb:
                    key = (ea, eb, da.rules, db.rules)
                    by_pair.setdefault(key, []).append(atom)
                    decisions[key] = (da, db)
            for key, atoms in by_pair.items():
                found.setdefault((key, tuple(atoms)), []).append((uid, gid))
        for (key, atoms), who in found.items():
            da, db = decisions[key]
            result.differences.append(Difference(path, atoms, da, db,
                                                 tuple(who) if by_subject else ()))
    return result


# --- output ----------------------------------------------------------------------------

def _side(policy: Policy, req: Request, d: Decision, by_subject: bool) -> dict:
    out = to_json(policy, Verdict(req, d))
    if not by_subject:  # neither policy asks who is asking: the output it always had
        out.pop("subject")
    return out


def difference_json(result: DiffResult, d: Difference) -> dict:
    req, end = d.request()
    return {
        "op": req.op,
        "path": show_path(d.path),
        "to": None,
        "end": end,
        "atoms": list(d.atoms),
        "groups": list(d.groups),
        **({"requesters": [{"uid": u, "gid": g} for u, g in d.requesters]} if d.requesters else {}),
        "old": _side(result.old, req, d.old, bool(d.requesters)),
        "new": _side(result.new, req, d.new, bool(d.requesters)),
    }


def summary(result: DiffResult, shown: Optional[int] = None) -> str:
    if result.equivalent:
        return (f"equivalent: {result.old.file} and {result.new.file} decide every request "
                f"alike ({result.pairs} class pairs compared)")
    groups = list(result.groups)
    n = len(result.differences)
    text = (f"{len(groups)} op group{'s differ' if len(groups) != 1 else ' differs'} "
            f"({', '.join(groups)}) at {result.places} place{'s' if result.places != 1 else ''} "
            f"({n} difference{'s' if n != 1 else ''} over {result.pairs} class pairs)")
    if shown is not None and shown < n:
        text += f"; {shown} shown (--limit)"
    return text


def to_json_obj(result: DiffResult, limit: int) -> dict:
    return {
        "equivalent": result.equivalent,
        "old": result.old.file,
        "new": result.new.file,
        "summary": summary(result, min(limit, len(result.differences))),
        "groups": {g: [show_path(p) for p in paths[:limit]] for g, paths in result.groups.items()},
        "places": result.places,
        "pairs": result.pairs,
        "differences": [difference_json(result, d) for d in result.differences[:limit]],
    }


def _decision_text(policy: Policy, d: Decision) -> str:
    text = d.short()
    if d.rules:
        r = policy.rules[d.rules[0]]
        text += f" ({r.file or policy.file}:{r.line}: {r.text})"
    elif policy.default.line is not None:
        text += f" (default, {policy.file}:{policy.default.line})"
    else:
        text += " (default)"
    return text


def to_text(result: DiffResult, limit: int) -> str:
    lines = []
    for d in result.differences[:limit]:
        lines.append(f"{show_path(d.path)}: {', '.join(d.groups)}")
        lines.append(f"  ops: {ops.compress_atoms(d.atoms)}")
        if d.requesters:
            who = ", ".join(f"uid {u} gid {g}" for u, g in d.requesters[:4])
            more = len(d.requesters) - 4
            lines.append(f"  by: {who}" + (f" and {more} more" if more > 0 else ""))
        lines.append(f"  old: {_decision_text(result.old, d.old)}")
        lines.append(f"  new: {_decision_text(result.new, d.new)}")
    lines.append(summary(result, min(limit, len(result.differences))))
    return "\n".join(lines)
