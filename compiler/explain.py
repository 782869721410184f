"""Verdicts as people and programs read them (`fpol explain`)."""

from __future__ import annotations

import json
from typing import Optional, cast

from . import ops
from .evaluate import Request, Verdict
from .paths import path_text
from .policy import Policy


def show_path(comps: tuple[bytes, ...]) -> str:
    return path_text(comps).decode("utf-8", "backslashreplace")


def request_text(req: Request) -> str:
    text = f"{req.op} {show_path(req.path)}"
    if req.to is not None:
        text += f" to {show_path(req.to)}"
    if req.op in ("open", "create"):
        text += f" flags={flags_text(req.flags)}"
    if req.op == "access":
        text += f" mask={mask_text(req.mask)}"
    if req.uid:  # who is asking (LANGUAGE.md §6), as a case table writes it
        text += f" uid={req.uid}"
    if req.gid:
        text += f" gid={req.gid}"
    return text


def subject_note(policy: Policy, req: Request, given: bool) -> Optional[str]:
    """Which requester a verdict is for, where that matters or was asked for."""
    who = f"as uid {req.uid}, gid {req.gid}"
    if not policy.has_subjects:
        return f"{who}: no rule of this policy depends on who is asking" if given else None
    return who if given else f"{who} (give --uid and --gid to ask for another requester)"


def flags_text(flags: int) -> str:
    acc = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR", 3: "3"}[flags & ops.O_ACCMODE]
    names = [acc]
    rest = flags & ~ops.O_ACCMODE
    for name, bit in sorted(ops.OPEN_FLAGS.items(), key=lambda kv: kv[1]):
        if bit and bit & rest == bit and name not in ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_SYNC"):
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return "|".join(names)


def mask_text(mask: int) -> str:
    text = ("r" if mask & ops.MAY_READ else "") + ("w" if mask & (ops.MAY_WRITE | ops.MAY_APPEND) else "") \
        + ("x" if mask & ops.MAY_EXEC else "")
    return text or "-"


def _rule_json(policy: Policy, index: Optional[int]):
    if index is None:
        return None
    r = policy.rules[index]
    return {"file": r.file or policy.file, "line": r.line, "text": r.text}


def to_json(policy: Policy, v: Verdict) -> dict:
    d = v.decision
    deciding = d.rules[0] if d.rules else None
    if v.exdev:
        deciding = v.lost_rule
    return {
        "op": v.request.op,
        "path": show_path(v.request.path),
        "to": show_path(v.request.to) if v.request.to is not None else None,
        "flags": flags_text(v.request.flags) if v.request.op in ("open", "create") else None,
        "mask": mask_text(v.request.mask) if v.request.op == "access" else None,
        "decision": d.kind,
        "errno": d.errno,
        "userspace": d.mode if d.kind == "userspace" else None,
        "audit": d.audit,
        "rule": _rule_json(policy, deciding),
        "rules": [_rule_json(policy, i) for i in d.rules],
        "audit_rules": [_rule_json(policy, i) for i in d.audit_rules],
        "default": not d.rules and not v.exdev,
        "complain": d.complained,
        "no_gain_by_moving": {
            "op": v.exdev_atom,
            "at": show_path(v.request.path + cast("tuple[bytes, ...]", v.exdev_suffix)),
        } if v.exdev and not v.note else None,
        "note": v.note,
        "subject": {"uid": v.request.uid, "gid": v.request.gid},
    }


def to_text(policy: Policy, v: Verdict, subject_given: bool = False) -> str:
    """`subject_given`: the requester was chosen (--uid/--gid), so say whom it was."""
    d = v.decision
    head = f"{request_text(v.request)}: {d.short().replace(' +audit', '')}"
    lines = [head]
    note = subject_note(policy, v.request, subject_given)
    if note:
        lines.append(f"  {note}")
    where = policy.file
    if v.exdev and v.note:
        pass  # a realisation's refusal: the note below says why
    elif v.exdev:
        lost = policy.rules[v.lost_rule] if v.lost_rule is not None else None
        assert v.exdev_suffix is not None  # set with exdev
        at = show_path(v.request.path + v.exdev_suffix)
        because = f"which {lost.file or where}:{lost.line} ({lost.text}) decides at the source" if lost else \
            "which the default decides at the source"
        lines.append(f"  no gain by moving: the destination would be looser for "
                     f"{v.exdev_atom} at {at}, {because}")
    elif d.rules:
        for i in d.rules:
            r = policy.rules[i]
            lines.append(f"  decided by {r.file or where}:{r.line}: {r.text}")
    else:
        dflt = policy.default
        if dflt.line is not None:
            lines.append(f"  decided by the default ({where}:{dflt.line}: default {dflt.text})")
        else:
            lines.append("  decided by the default (default allow)")
    if v.note:
        lines.append(f"  {v.note}")
    if d.complained:
        lines.append("  mode complain: the deny is logged and allowed")
    for i in d.audit_rules:
        r = policy.rules[i]
        lines.append(f"  audited by {r.file or where}:{r.line}: {r.text}")
    if d.audit and not d.audit_rules:
        lines.append("  audited")
    return "\n".join(lines)


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False)
