"""The canonical form of a policy (`fpol fmt`), and of each rule.

One spelling per statement: single spaces, ops in table order without repeats,
scopes in a fixed order, the `by` list after the scopes with its subjects sorted (uid,
gid, user, group; ids by number), one `except` list (scopes, then its `by` subjects), paths normalised and quoted only when
they must be. Comments stay where they were; runs of blank lines shrink to one.
The same rule text names rules in diagnostics and in the generated C, so two
spellings of one rule print, and compile, the same.
"""

from __future__ import annotations

import re

from . import ast, ops
from .paths import PathProblem, normalise_path, render_path

_SCOPE_ORDER = {"under": 0, "at": 1, "matching": 2, "named": 3}
_OP_ORDER: dict[str, int] = {}
for _name in ops.GROUPS + ops.SINGLE_OPS:  # read, write, create: the group's place
    _OP_ORDER.setdefault(_name, len(_OP_ORDER))


def render_ref(lit: ast.PathLit, kind: str) -> str:
    """`$NAME...` as written, the part after the name normalised like any path."""
    assert lit.ref is not None  # a reference
    name, rest = lit.ref
    if kind in ("under", "at") and rest.startswith(b"/"):
        try:
            comps = normalise_path(rest)
            rest = (b"/" + b"/".join(comps)) if comps else b""
        except PathProblem:
            return lit.raw
    force = kind in ("matching", "named") or lit.quoted
    if not force and re.fullmatch(rb"[A-Za-z0-9._+@%~=/-]*", rest):
        shown = rest.decode("ascii")  # bare, as `$home/.ssh` is written
    else:
        shown = render_path(rest, force_quotes=force)
    # `${name}` where the text after the name would otherwise continue it.
    ref = f"${{{name}}}" if rest[:1].isalnum() or rest[:1] == b"_" else f"${name}"
    if shown.startswith('"'):
        return f'"{ref}' + shown[1:]
    return ref + shown


def render_literal(value: bytes, force_quotes: bool = False) -> str:
    """A path that is no reference: a leading `$` is written `\\x24`."""
    if value.startswith(b"$"):
        return '"\\x24' + render_path(value[1:], force_quotes=True)[1:]
    return render_path(value, force_quotes)


def render_scope(scope: ast.Scope) -> str:
    value = scope.path.value
    if scope.path.ref is not None:
        return f"{scope.kind} {render_ref(scope.path, scope.kind)}"
    if scope.kind in ("under", "at"):
        try:
            value = b"/" + b"/".join(normalise_path(value))
        except PathProblem:
            return f"{scope.kind} {scope.path.raw}"
        return f"{scope.kind} {render_path(value)}"
    return f"{scope.kind} {render_literal(value, force_quotes=True)}"


def _sorted_scopes(scopes) -> list[str]:
    rendered = {(_SCOPE_ORDER[s.kind], render_scope(s)) for s in scopes}
    return [text for _, text in sorted(rendered)]


def render_ops(words) -> str:
    names = dict.fromkeys(w.text for w in words)
    return ", ".join(sorted(names, key=lambda n: (_OP_ORDER.get(n, len(_OP_ORDER)), n)))


# Subjects (LANGUAGE.md §6): uid items, then gid, then user and group names; ids by number.
_SUBJECT_ORDER = {"uid": 0, "gid": 1, "user": 2, "group": 3}
_ID = re.compile(r"([0-9]+)(?:-([0-9]+))?")


def parse_id(text: str) -> "tuple[int, int] | None":
    """`5` -> (5, 5), `10-19` -> (10, 19); None for anything else (no sign, no base)."""
    m = _ID.fullmatch(text)
    if not m:
        return None
    low = int(m.group(1))
    return low, int(m.group(2)) if m.group(2) is not None else low


def render_subject(item: ast.SubjectItem) -> str:
    """`uid 7`, `uid 10-19`, `user backup`: ids without leading zeros, `N-N` as `N`."""
    value = item.value.text
    span = parse_id(value) if item.kind in ("uid", "gid") else None
    if span is not None:
        value = str(span[0]) if span[0] == span[1] else f"{span[0]}-{span[1]}"
    return f"{item.kind} {value}"


def _subject_key(item: ast.SubjectItem):
    span = parse_id(item.value.text) if item.kind in ("uid", "gid") else None
    if span is not None:
        return (_SUBJECT_ORDER[item.kind], 0, span[0], span[1], "")
    return (_SUBJECT_ORDER[item.kind], 1, 0, 0, item.value.text)


def sorted_subjects(items) -> list[str]:
    """One list's items in canonical order: `by uid 7, uid 5` is `by uid 5, uid 7`. A
    repeated item stays (it is warned about, FP109, and fmt keeps what check says)."""
    return [render_subject(item) for item in sorted(items, key=_subject_key)]


def render_rule(rule: ast.Rule) -> str:
    parts = [rule.action.text, render_ops(rule.ops)]
    if rule.target is not None:
        parts.append("to userspace")
        if rule.target.mode in ("before", "after"):
            parts.append(rule.target.mode)
    parts.extend(_sorted_scopes(rule.scopes))
    for by in rule.subjects:  # one list (more than one is an error, FP040): kept apart
        parts.append("by " + ", ".join(sorted_subjects(by.items)))
    excepts = _sorted_scopes(s for clause in rule.excepts for s in clause)
    if rule.except_subjects:
        excepts.append("by " + ", ".join(sorted_subjects(rule.except_subjects)))
    if excepts:
        parts.append("except " + ", ".join(excepts))
    for e in rule.errnos:
        parts.append(f"with {e.text}")
    return " ".join(parts)


def render_statement(st: ast.Statement) -> str:
    if isinstance(st, ast.Include):
        return "include " + render_literal(st.path.value, force_quotes=True) \
            if st.path.ref is None else f"include {st.path.raw}"
    if isinstance(st, ast.Define):
        values = [render_ref(v, "under") if v.ref is not None else render_literal(v.value)
                  for v in st.values]
        return f"define {st.name.text} = " + ", ".join(dict.fromkeys(values))
    if isinstance(st, ast.Header):
        return f"{st.keyword} {st.value.text}"
    if isinstance(st, ast.Default):
        text = f"default {st.action.text}"
        if st.errno is not None:
            text += f" with {st.errno.text}"
        if st.target is not None:
            text += " to userspace" + (f" {st.target.mode}" if st.target.mode in ("before", "after") else "")
        return text
    return render_rule(st)


def format_policy(tree: ast.PolicyFile) -> str:
    """The canonical text of a parsed policy (only call it on a tree without syntax errors)."""
    by_line: dict[int, ast.Statement] = {st.span.line: st for st in tree.statements}
    statement_lines: dict[int, ast.Statement] = {}
    for st in tree.statements:
        for line in range(st.span.line, st.span.end_line + 1):
            statement_lines[line] = st
    comments_by_line = {c.line: c for c in tree.comments}

    out: list[str] = []
    pending_blank = False

    def emit(text: str) -> None:
        nonlocal pending_blank
        if pending_blank and out:
            out.append("")
        pending_blank = False
        out.append(text)

    for line in range(1, tree.line_count + 1):
        if line in by_line:
            st = by_line[line]
            # Comments on the continuation lines of a statement: all but the last go above it.
            inner = [comments_by_line[n] for n in range(st.span.line, st.span.end_line + 1)
                     if n in comments_by_line]
            for c in inner[:-1]:
                emit(c.text)
            text = render_statement(st)
            if inner:
                text += "  " + inner[-1].text
            emit(text)
        elif line in statement_lines:
            continue
        elif line in comments_by_line:
            emit(comments_by_line[line].text)
        elif line in tree.blank_lines:
            pending_blank = True
    return "\n".join(out) + "\n" if out else ""
