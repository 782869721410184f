"""`fpol learn`: the smallest change to a policy that lets every logged request it denies go
through (in the spirit of AppArmor's aa-logprof, for complain-mode logs).

The audit log (docs/cli.md "Audit log") has a JSON object per line. The requests to learn
from are those the policy refused or would refuse: lines with `"complained": true` (complain
mode allowed them) and lines whose `decision` is `deny` (audited refusals). Each is judged
again by the reference evaluator with the policy *enforced*; for every end of it that is
denied (one op facet, an "atom", at one path):

- decided by the default (`default deny`): an `allow OP SCOPE` rule is added;
- decided by deny rules: every deny rule matching there gains `except SCOPE` (deny beats
  allow, so an allow could not help). The except removes the rule there for all its ops.

SCOPE widens the logged path only as far as asked: `exact` (`at PATH`), `dir` (`under` the
directory holding it), `name` (`under DIR named "*SUFFIX"`, from the common suffix of the
names logged in that directory; `matching "DIR/**/*SUFFIX"` inside an except). Requests of
one op group in one scope share a line, and each added or changed line says how many log
lines it covers. A request refused only by "no gain by moving" (EXDEV) cannot be allowed by
widening: it is reported, not learned. The audit log does not record open flags or access
masks, so an `open`, `create` or `access` line is learned for every mode of that op (a line
that has `flags`/`mask` keys is learned for exactly that mode's op).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, cast

from . import ast, ops
from .decide import Decision
from .diagnostics import Span
from .evaluate import Evaluator, Request, parse_path
from .fmt import render_literal, render_rule, render_scope
from .paths import PathProblem, path_text
from .policy import Policy

WIDEN = ("exact", "dir", "name")
_GLOB_CHARS = set(b"*?{}[],\\")


class LogError(ValueError):
    def __init__(self, line: int, column: int, message: str):
        super().__init__(f"{line}:{column}: {message}")
        self.line, self.column, self.message = line, column, message


@dataclass(frozen=True)
class Logged:
    """One audit-log line that records a refused (or complained) request."""

    line: int
    op: str
    path: tuple[bytes, ...]
    to: Optional[tuple[bytes, ...]]
    flags: Optional[int]
    mask: Optional[int]
    # Who asked (LANGUAGE.md §6): the log's uid and gid; 0 when it does not say.
    uid: int = 0
    gid: int = 0

    def text(self) -> str:
        s = f"{self.op} {_show(self.path)}"
        return s + (f" to {_show(self.to)}" if self.to is not None else "")


def _show(p: tuple[bytes, ...]) -> str:
    return path_text(p).decode("utf-8", "backslashreplace")


@dataclass
class LogRead:
    entries: list[Logged] = field(default_factory=list)
    skipped_unknown_path: list[int] = field(default_factory=list)
    lines: int = 0


def _path(value, line: int, key: str) -> tuple[bytes, ...]:
    if not isinstance(value, str) or not value.startswith("/"):
        raise LogError(line, 1, f"`{key}` must be an absolute path string, not {json.dumps(value)}")
    try:
        return parse_path(value.encode("utf-8", "surrogateescape"))
    except PathProblem as p:
        raise LogError(line, 1, f"bad `{key}` {value!r}: {p.message}") from None


def read_log(text: str) -> LogRead:
    """The refused requests of an audit log (LogError on a malformed line)."""
    out = LogRead()
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        out.lines += 1
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise LogError(number, e.colno, f"not JSON: {e.msg}") from None
        if not isinstance(rec, dict):
            raise LogError(number, 1, "each line must be a JSON object")
        if not (rec.get("complained") is True or rec.get("decision") == "deny"):
            continue
        op = rec.get("op")
        if op not in ops.SINGLE_OPS:
            raise LogError(number, 1, f"unknown op {json.dumps(op)}")
        if rec.get("path") is None:
            out.skipped_unknown_path.append(number)
            continue
        path = _path(rec["path"], number, "path")
        to = None
        if op in ops.TWO_PATH_OPS:
            if rec.get("to") is None:
                out.skipped_unknown_path.append(number)
                continue
            to = _path(rec["to"], number, "to")
        flags, mask = rec.get("flags"), rec.get("mask")
        uid, gid = rec.get("uid"), rec.get("gid")
        for key, value in (("flags", flags), ("mask", mask), ("uid", uid), ("gid", gid)):
            if value is not None and (not isinstance(value, int)
                                      or (key in ("uid", "gid") and isinstance(value, bool))):
                raise LogError(number, 1, f"`{key}` must be a number")
        out.entries.append(Logged(number, op, path, to, flags, mask, uid or 0, gid or 0))
    return out


# --- what is denied -----------------------------------------------------------------------

def _atoms(e: Logged) -> list[tuple[tuple[bytes, ...], str]]:
    """(path, atom) for each end of the request; every mode of the op when the log does
    not say which."""
    if e.op in ("open", "create") and e.flags is not None:
        return [(e.path, ops.open_atom(e.op, e.flags))]
    if e.op == "access" and e.mask is not None:
        return [(e.path, ops.access_atom(e.mask))]
    if e.op in ops.TWO_PATH_OPS:
        return [(e.path, f"{e.op}:src"), (cast("tuple[bytes, ...]", e.to), f"{e.op}:dst")]
    return [(e.path, a) for a in ops.ATOMS_OF_OP[e.op]]


def denied(ev: Evaluator, e: Logged) -> list[tuple[tuple[bytes, ...], str, Decision]]:
    return [(p, a, d) for p, a in _atoms(e)
            if (d := ev.decision_at(p, a, e.uid, e.gid)).kind == "deny"]


def refused(ev: Evaluator, e: Logged) -> Optional[str]:
    """Why the policy would still refuse the logged request (None: it goes through)."""
    bad = denied(ev, e)
    if bad:
        p, a, d = bad[0]
        return f"{a} at {_show(p)} is denied ({d.errno})"
    if e.op in ("rename", "link"):
        v = ev.evaluate(Request(e.op, e.path, e.to, uid=e.uid, gid=e.gid))
        if v.exdev:
            return "no gain by moving (EXDEV): the destination would be looser than the source"
    return None


# --- scopes ---------------------------------------------------------------------------

def _plain(comps: tuple[bytes, ...]) -> bool:
    return not any(_GLOB_CHARS & set(c) for c in comps)


def _suffix_glob(names: list[bytes]) -> Optional[bytes]:
    """`*SUFFIX` from the names' common suffix, starting at its first `.`, `_` or `-` when it
    has one (`a.log`, `bb.log` give `*.log`); a single name gives `*` and its extension (or
    itself, without one). None when a name holds glob characters."""
    if any(_GLOB_CHARS & set(n) for n in names):
        return None
    if len(names) == 1:
        dot = names[0].rfind(b".")
        return b"*" + names[0][dot:] if dot > 0 else names[0]
    common = cast(bytes, os.path.commonprefix([n[::-1] for n in names]))[::-1]
    seps = [i for i in (common.find(b"."), common.find(b"_"), common.find(b"-")) if i >= 0]
    if seps:
        common = common[min(seps):]
    return b"*" + common


@dataclass(frozen=True)
class Scope:
    """A widened place: the scopes of a rule, and the one scope that says it in an except
    (`under /a` + `named "*.log"`, and `matching "/a/**/*.log"`), as (kind, value) pairs."""

    rule: tuple[tuple[str, bytes], ...]
    exc: tuple[str, bytes]

    def scopes(self, span: Span, for_except: bool) -> tuple[ast.Scope, ...]:
        items = (self.exc,) if for_except else self.rule
        return tuple(ast.Scope(kind, ast.PathLit(render_literal(value, kind in ("matching", "named")),
                                                 value, True, span), span)
                     for kind, value in items)

    @property
    def rule_text(self) -> str:
        return " ".join(render_scope(s) for s in self.scopes(Span.point(1, 1), False))

    @property
    def except_text(self) -> str:
        return render_scope(self.scopes(Span.point(1, 1), True)[0])


def widen(paths: list[tuple[bytes, ...]], level: str) -> list[tuple[Scope, list[int]]]:
    """Scopes covering `paths` at the widening level, each with the indexes of the paths it
    covers."""
    out: dict[Scope, list[int]] = {}

    def at(i: int, p) -> None:
        item = ("at", path_text(p))
        out.setdefault(Scope((item,), item), []).append(i)

    if level == "exact":
        for i, p in enumerate(paths):
            at(i, p)
        return list(out.items())
    by_dir: dict[tuple[bytes, ...], list[int]] = {}
    for i, p in enumerate(paths):
        if not p:  # the root itself
            at(i, p)
            continue
        by_dir.setdefault(p[:-1], []).append(i)
    for d, idx in by_dir.items():
        if level == "dir":
            item = ("under", path_text(d))
            out.setdefault(Scope((item,), item), []).extend(idx)
            continue
        glob = _suffix_glob([paths[i][-1] for i in idx])
        if glob is None or not _plain(d):
            for i in idx:
                at(i, paths[i])
            continue
        scope = Scope((("under", path_text(d)), ("named", glob)),
                      ("matching", path_text(d + (b"**", glob))))
        out.setdefault(scope, []).extend(idx)
    return list(out.items())


# --- the proposal ------------------------------------------------------------------------

@dataclass
class Proposal:
    files: dict[str, tuple[str, str]]  # file -> (old text, new text)
    covered: list[Logged]
    unresolved: list[tuple[Logged, str]]
    already_allowed: list[Logged]
    added: int = 0  # rules added
    changed: int = 0  # rules given an except

    def unified_diff(self) -> str:
        out: list[str] = []
        for file, (old, new) in self.files.items():
            if old == new:
                continue
            out.extend(difflib.unified_diff(old.splitlines(keepends=True),
                                            new.splitlines(keepends=True),
                                            f"a/{file}", f"b/{file}"))
        return "".join(out)


def _op_word(atom: str) -> str:
    return ops.atom_op(atom)


def propose(policy: Policy, units, log: LogRead, level: str, log_name: str,
            recheck: Callable[[dict[str, str]], Optional[Policy]]) -> Proposal:
    """The change; `units` are the policy's files (driver.Checked.units); `recheck` checks
    the policy with some files' text replaced and returns it (None on errors)."""
    enforced = replace(policy, mode="enforce")
    texts = {u.file: u.data.decode("utf-8", "surrogateescape") for u in units}
    trees = {u.file: u.tree for u in units}
    top = units[0].file
    ev = Evaluator(enforced)
    pending = [e for e in log.entries if denied(ev, e) or refused(ev, e)]
    already = [e for e in log.entries if e not in pending]
    allows: dict[str, dict[str, set[int]]] = {}  # scope rule text -> op -> log lines
    excepts: dict[int, dict[Scope, set[int]]] = {}  # rule index -> scope -> log lines
    current = enforced
    for _round in range(6):
        ev = Evaluator(current)
        items = []  # (path, atom, decision, entry)
        for e in pending:
            for p, a, d in denied(ev, e):
                items.append((p, a, d, e))
        if not items:
            break
        # Default denies become allows; rule denies become excepts on every deny rule there.
        by_kind: dict[tuple, list[int]] = {}
        for i, (p, a, d, e) in enumerate(items):
            if d.rules:
                for r in ev.rules_at(p, e.uid, e.gid):
                    if r.action == "deny" and a in r.atoms:
                        by_kind.setdefault(("x", r.index), []).append(i)
            else:
                by_kind.setdefault(("a", _op_word(a)), []).append(i)
        for key, idx in by_kind.items():
            paths = [items[i][0] for i in idx]
            for scope, which in widen(paths, level):
                lines = {items[idx[w]][3].line for w in which}
                if key[0] == "a":
                    ops_here = {_op_word(items[idx[w]][1]) for w in which}
                    slot = allows.setdefault(scope.rule_text, {})
                    for o in ops_here:
                        slot.setdefault(o, set()).update(lines)
                else:
                    excepts.setdefault(key[1], {}).setdefault(scope, set()).update(lines)
        new_texts = _render(texts, trees, top, policy, allows, excepts, log_name)
        checked = recheck(new_texts)
        if checked is None:
            break
        current = replace(checked, mode="enforce")
    ev = Evaluator(current)
    unresolved = [(e, why) for e in pending if (why := refused(ev, e))]
    covered = [e for e in pending if not refused(ev, e)]
    new_texts = _render(texts, trees, top, policy, allows, excepts, log_name)
    return Proposal({f: (texts[f], new_texts.get(f, texts[f])) for f in texts}, covered,
                    unresolved, already, added=len(allows),
                    changed=len(excepts))


def _count(n: int) -> str:
    return f"{n} log line{'s' if n != 1 else ''}"


def _render(texts: dict[str, str], trees, top: str, policy: Policy,
            allows: dict[str, dict[str, set[int]]], excepts: dict[int, dict[Scope, set[int]]],
            log_name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    # Excepts: rewrite each rule's statement in its own file.
    edits: dict[str, list[tuple[int, int, list[str]]]] = {}
    for ri, scopes in sorted(excepts.items()):
        rule = policy.rules[ri]
        file = rule.file or top
        st = next((s for s in trees[file].statements
                   if isinstance(s, ast.Rule) and s.span.line == rule.line), None)
        if st is None:
            continue
        new_scopes = tuple(x for sc in scopes for x in sc.scopes(st.span, True))
        changed = replace(st, excepts=st.excepts + (new_scopes,))  # `by` lists kept
        numbers = set().union(*scopes.values())
        what = ", ".join(sc.except_text for sc in scopes)
        edits.setdefault(file, []).append((st.span.line, st.span.end_line, [
            f"# fpol learn ({log_name}): `except {what}` covers {_count(len(numbers))}",
            render_rule(changed)]))
    for file, text in texts.items():
        lines = text.split("\n")
        for first, last, new in sorted(edits.get(file, []), reverse=True):
            old_last = lines[last - 1]
            comment = ""
            if "#" in old_last:
                from .source import _cut_comment

                _, col = _cut_comment(old_last)
                if col is not None:
                    comment = "  " + old_last[col:].rstrip()
            new = new[:-1] + [new[-1] + comment]
            lines[first - 1:last] = new
        out[file] = "\n".join(lines)
    if allows:
        body = out[top]
        if body and not body.endswith("\n"):
            body += "\n"
        total = set()
        for v in allows.values():
            for s in v.values():
                total |= s
        added = ["", f"# fpol learn ({log_name}): allowed what the log shows this policy denying "
                     f"({_count(len(total))})"]
        for scope_text, by_op in sorted(allows.items()):
            names = sorted(by_op, key=lambda o: ops.SINGLE_OPS.index(o))
            numbers = set().union(*by_op.values())
            added.append(f"allow {', '.join(names)} {scope_text}  # {_count(len(numbers))}")
        out[top] = body + "\n".join(added) + "\n"
    return out
