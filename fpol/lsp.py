"""`fpol lsp`: a Language Server Protocol server for .fpol policies (pygls, over stdio).

It shares the compiler's front end (compiler/driver.py `check`): the diagnostics an editor
shows are the ones `fpol check` prints, with the same codes, spans, hints and warnings,
refreshed on every change. Besides diagnostics it answers:

- hover: on a rule, its ops with groups expanded, the classes it decides and example paths;
  on a subject (`user backup`), the id it stands for on this machine;
  on an op or group name, its members; on an errno, its number and meaning;
- completion: keywords where a statement starts, op and group names after an action or a
  comma, clause keywords, errnos after `with`, header values, `$NAME` for defined names,
  subject kinds after `by` and this machine's user and group names after `user`/`group`;
- formatting: the canonical form of `fpol fmt` (nothing while the text has syntax errors);
- code actions: the did-you-mean hints (`did you mean `write`?`) as quick fixes;
- go to definition: an `include`'s file, and the `define` of a `$NAME` (in this file or
  one it includes).

The language work is in plain functions over text (`Document`), which never raise on any
text (tests/test_lsp.py drives them with the fuzzing strategies); the server around them
only converts positions (LSP counts UTF-16 code units, the compiler code points) and turns
any unexpected failure into a log message, never a dead server.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional
from urllib.parse import unquote, urlparse

from fpol.compiler import ast, ops
from fpol.compiler.diagnostics import ERROR

if TYPE_CHECKING:
    from fpol.compiler.driver import Checked

# --- the language side: text in, plain data out ---------------------------------------------

HEADER_VALUES: dict[str, tuple[str, ...]] = {
    "abi": ("v4", "v3"),
    "mode": ("enforce", "complain"),
    "names": ("case-sensitive", "case-insensitive"),
    "default": ("allow", "deny", "redirect"),
}
ACTIONS = ("allow", "deny", "audit", "redirect")
CLAUSES = ("under", "at", "matching", "named", "except", "with", "by")
SUBJECT_KINDS = ("uid", "gid", "user", "group")  # after `by` (LANGUAGE.md §6)
COMMON_ERRNOS = ("EACCES", "EPERM", "EROFS", "ENOENT", "EXDEV", "EOPNOTSUPP")
# What each keyword means, in a line (docs/language.md has the whole story).
KEYWORD_DOCS = {
    "policy": "`policy NAME` names the policy (1-8 characters `[a-z0-9_]`)",
    "abi": "`abi v4|v3`: the fuse-bpf RFC version to generate for",
    "mode": "`mode enforce|complain`: in complain mode every deny is logged and allowed",
    "names": "`names case-sensitive|case-insensitive`: how names compare (ASCII case)",
    "default": "`default allow | deny [with ERRNO] | redirect to userspace`: the decision "
               "where no rule decides",
    "include": "`include \"FILE\"`: the rules and definitions of another file, relative to "
               "this one",
    "define": "`define NAME = PATH, ...`: paths that `$NAME` stands for",
    "allow": "allow the request (loses to any matching deny or redirect)",
    "deny": "fail the request with the rule's errno (EACCES unless `with ERRNO`)",
    "audit": "log the request; never changes the decision",
    "redirect": "send the request to the userspace daemon (`to userspace [before|after]`)",
    "to": "`to userspace [before|after|instead]`: where a redirect goes",
    "userspace": "the fpol daemon: `before` vets the arguments, `after` sees the result, "
                 "`instead` (the default) handles the whole op",
    "before": "the daemon vets the request first, then the kernel does it",
    "after": "the kernel does the op, then the daemon sees the result and may veto",
    "instead": "the daemon handles the whole op (the same as plain `to userspace`)",
    "under": "`under PATH`: the path itself and everything beneath it, component-wise",
    "at": "`at PATH`: exactly that node",
    "matching": "`matching \"GLOB\"`: full paths the glob matches (`*`, `?`, `**`, `{a,b}`)",
    "named": "`named \"GLOB\"`: every node whose last component the glob matches",
    "except": "`except SCOPE, ...`: removes what any listed scope matches from the rule",
    "with": "`with ERRNO`: the errno of a deny (default EACCES)",
    "by": "`by SUBJECT, ...`: the rule applies only to requesters matching one of the subjects "
          "(`uid N`, `uid N-M`, `gid N`, `gid N-M`, `user NAME`, `group NAME`); in `except`, "
          "`by SUBJECT` leaves them out",
    "uid": "`uid N` or `uid N-M`: a requester whose filesystem uid is N (or in N..M)",
    "gid": "`gid N` or `gid N-M`: a requester whose filesystem gid is N (or in N..M); "
           "supplementary groups do not count (FUSE does not send them)",
    "user": "`user NAME`: a requester whose filesystem uid is NAME's, resolved on this machine "
            "when the policy is checked",
    "group": "`group NAME`: a requester whose filesystem gid is NAME's, resolved on this machine "
             "when the policy is checked; supplementary groups do not count",
}

_HINT_FIX = re.compile(r"(?:did you mean|try) `([^`]+)`")
_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"?|[^\s,"]+|,')
_DEFINE = re.compile(r"^[ \t]*define[ \t]+([A-Za-z_][A-Za-z0-9_]*)", re.M)
_WORD_CHARS = re.compile(r"[A-Za-z0-9_.$-]")


@dataclass
class Problem:
    """One diagnostic, in 0-based lines and code-point columns of this document."""

    code: str
    severity: str  # error | warning
    message: str
    hint: Optional[str]
    start: tuple[int, int]
    end: tuple[int, int]
    related: list = field(default_factory=list)  # (message, start, end)
    fix: Optional[str] = None  # the replacement a did-you-mean hint names


@dataclass
class Document:
    """One version of an open document and what the compiler made of it (with check=False
    only its text: enough for completion, definitions and formatting, and instant)."""

    text: str
    path: str
    check: bool = True
    lines: list[str] = field(init=False)
    checked: Optional[Checked] = field(init=False, default=None)
    problems: list[Problem] = field(init=False, default_factory=list)

    def __post_init__(self):
        self.lines = self.text.split("\n")
        if self.check:
            self.checked = _check(self.text, self.path)
            self.problems = [p for p in (_problem(d, self) for d in self.checked.diagnostics)
                             if p]

    # positions ------------------------------------------------------------------------
    def clamp(self, line: int, col: int) -> tuple[int, int]:
        line = min(max(line, 0), len(self.lines) - 1)
        return line, min(max(col, 0), len(self.lines[line].rstrip("\r")) if col > 0 else 0)

    def _span(self, span) -> tuple[tuple[int, int], tuple[int, int]]:
        start = self.clamp(span.line - 1, span.column - 1)
        end = self.clamp(span.end_line - 1, span.end_column - 1)
        if end <= start:
            end = (start[0], start[1] + 1) if start[1] < len(self.lines[start[0]].rstrip("\r")) \
                else start
        return start, end

    def statements(self):
        tree = getattr(self.checked, "tree", None)
        return tree.statements if tree is not None else ()


def _check(text: str, path: str):
    from fpol.compiler.driver import check

    try:
        data: "bytes | str" = text
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from the client: bytes the decoder reports
        data = text.encode("utf-8", "surrogatepass")
    return check(data, path)


def _problem(d, doc: Document) -> Optional[Problem]:
    if os.path.abspath(d.file) != os.path.abspath(doc.path):
        # A problem in another file of the policy: shown on the include line that brings
        # it in (its "included from here" note), else at the top.
        shown = os.path.relpath(os.path.abspath(d.file), os.path.dirname(os.path.abspath(doc.path)))
        message = f"{shown}:{d.span.line}:{d.span.column}: {d.message}"
        start = end = (0, 0)
        for item in d.related:
            if len(item) > 2 and os.path.abspath(item[2]) == os.path.abspath(doc.path):
                start, end = doc._span(item[1])
                break
    else:
        start, end = doc._span(d.span)
        message = d.message
    related = []
    for item in d.related:
        msg, span = item[0], item[1]
        other = item[2] if len(item) > 2 else d.file
        if os.path.abspath(other) == os.path.abspath(doc.path):
            related.append((msg, *doc._span(span)))
    fix = None
    if d.hint and os.path.abspath(d.file) == os.path.abspath(doc.path):
        m = _HINT_FIX.search(d.hint)
        if m and start != end:  # a fix for this file's text (not an included file's)
            fix = m.group(1)
    return Problem(d.code, d.severity, message, d.hint, start, end, related, fix)


def diagnostic_text(p: Problem) -> str:
    """The message as `fpol check` words it: the message, then `= hint: ...`."""
    return p.message + (f"\n= hint: {p.hint}" if p.hint else "")


# hover --------------------------------------------------------------------------------------

def word_at(doc: Document, line: int, col: int) -> Optional[tuple[str, int, int]]:
    """The word (op, errno, keyword, `$NAME`) at a position and its columns."""
    if not 0 <= line < len(doc.lines):
        return None
    text = doc.lines[line]
    if col > len(text):
        return None
    start = col
    while start > 0 and _WORD_CHARS.match(text[start - 1]):
        start -= 1
    end = col
    while end < len(text) and _WORD_CHARS.match(text[end]):
        end += 1
    if start == end:
        return None
    return text[start:end], start, end


def _within(span, line: int, col: int) -> bool:
    pos = (line + 1, col + 1)
    return (span.line, span.column) <= pos <= (span.end_line, span.end_column)


def op_hover(name: str) -> str:
    atoms = sorted(ops.EXPANSION[name], key=ops.ATOMS.index)
    if name in ops.GROUPS:
        members = list(dict.fromkeys(ops.atom_op(a) for a in atoms))
        partial = [a for a in atoms if a != ops.atom_op(a)]
        text = f"**{name}** — op group: {', '.join(f'`{m}`' for m in members)}"
        if partial:
            text += "\n\nas request atoms: " + ", ".join(f"`{a}`" for a in atoms)
    else:
        groups = sorted({g for a in atoms for g in ops.SELECTORS[a] if g in ops.GROUPS},
                        key=ops.GROUPS.index)
        text = f"**{name}** — op"
        if len(atoms) > 1 or atoms[0] != name:
            text += ": atoms " + ", ".join(f"`{a}`" for a in atoms)
        text += "\n\nin groups: " + ", ".join(f"`{g}`" for g in groups)
        if name in ops.HANDLE_OPS:
            text += "\n\nacts on an open file: only `all` and its own name select it"
    return text


def errno_hover(name: str) -> Optional[str]:
    from fpol.compiler.analyse import ERRNOS, canonical_errno

    if name not in ERRNOS:
        return None
    value = ERRNOS[name]
    text = f"**{name}** = {value}: {os.strerror(value)}"
    canonical = canonical_errno(name)
    if canonical != name:
        text += f"\n\nthe same errno as `{canonical}` (the name fpol prints)"
    if name == "EACCES":
        text += "\n\nthe default errno of `deny`"
    return text


def _show(path: bytes) -> str:
    # A class reached by "any other name" has `.` there in its example path.
    comps = [b"<other name>" if c == b"." else c for c in path.split(b"/")]
    return b"/".join(comps).decode("utf-8", "backslashreplace")


def subject_hover(item: ast.SubjectItem) -> str:
    """`user backup`: the number it stands for on this machine; `uid 5-9`: what it means."""
    from fpol.compiler.analyse import resolve_name
    from fpol.compiler.fmt import parse_id

    head = f"**{item.kind}**: {KEYWORD_DOCS[item.kind]}"
    value = item.value.text
    if item.kind in ("user", "group"):
        number = resolve_name(item.kind, value)
        axis = "uid" if item.kind == "user" else "gid"
        found = f"`{item.kind} {value}` is {axis} {number} on this machine" if number is not None \
            else f"no {item.kind} `{value}` on this machine"
        return head + "\n\n" + found
    ids = parse_id(value)
    if ids is None:
        return head
    low, high = ids
    return head + "\n\n" + (f"{item.kind} {low}" if low == high else
                             f"{item.kind} {low} to {high} ({high - low + 1} ids)")


def rule_hover(doc: Document, rule: ast.Rule) -> str:
    from fpol.compiler.fmt import render_rule

    lines = [f"```fpol\n{render_rule(rule)}\n```"]
    expanded = []
    for w in rule.ops:
        if w.text in ops.GROUPS:
            members = dict.fromkeys(ops.atom_op(a) for a in sorted(ops.EXPANSION[w.text],
                                                                    key=ops.ATOMS.index))
            expanded.append(f"`{w.text}` = " + ", ".join(members))
        elif w.text in ops.OP_NAMES:
            expanded.append(f"`{w.text}`")
        else:
            expanded.append(f"`{w.text}` (unknown)")
    lines.append("**ops**: " + "; ".join(expanded))
    checked = doc.checked
    policy, classes = getattr(checked, "policy", None), getattr(checked, "classes", None)
    prule = None
    if policy is not None:
        here = os.path.abspath(doc.path)
        prule = next((r for r in policy.rules if r.span == rule.span and
                      os.path.abspath(getattr(r, "file", "") or doc.path) == here), None)
    if prule is None or classes is None:
        lines.append("classes: not computed while the policy has errors")
        return "\n\n".join(lines)
    decides, audits = [], []
    for c in classes.classes:
        if any(prule.index in d.rules for d in c.table):
            decides.append(c)
        elif any(prule.index in d.audit_rules for d in c.table):
            audits.append(c)
    if decides:
        lines.append(f"**decides** in {len(decides)} of {len(classes.classes)} classes "
                     f"(class{'es' if len(decides) != 1 else ''} "
                     + ", ".join(str(c.id) for c in decides[:12])
                     + (" …" if len(decides) > 12 else "") + ")")
    elif prule.action != "audit":
        lines.append("**decides** nothing: a stricter or more specific rule wins everywhere "
                     "it matches")
    if audits or prule.action == "audit":
        n = len(audits) + len(decides)
        lines.append(f"**audits** in {n} class{'es' if n != 1 else ''}")
    sample = sorted(decides or audits, key=lambda c: (b"." in c.example.split(b"/"), len(c.example)))
    if sample:
        lines.append("e.g. " + ", ".join(f"`{_show(c.example)}`" for c in sample[:2]))
    return "\n\n".join(lines)


def hover(doc: Document, line: int, col: int) -> Optional[str]:
    """Markdown for the thing at (line, col), 0-based code points; None where nothing is."""
    found = word_at(doc, line, col)
    for st in doc.statements():
        if not _within(st.span, line, col):
            continue
        if isinstance(st, ast.Rule):
            if found is not None and found[0].startswith("$"):
                break  # a defined name: its definition, below
            for w in st.ops:
                if _within(w.span, line, col) and w.text in ops.OP_NAMES:
                    return op_hover(w.text)
            for w in st.errnos:
                if _within(w.span, line, col):
                    return errno_hover(w.text) or rule_hover(doc, st)
            for item in [i for by in st.subjects for i in by.items] + list(st.except_subjects):
                if _within(item.span, line, col):
                    return subject_hover(item)
            if found is not None and found[0] == "by":
                return f"**by**: {KEYWORD_DOCS['by']}"
            return rule_hover(doc, st)
    if found is None:
        return None
    word = found[0]
    if word in ops.OP_NAMES:
        return op_hover(word)
    text = errno_hover(word)
    if text:
        return text
    if word.startswith("$"):
        found_def = definition(doc, line, found[1])
        if found_def is not None:
            path, (dline, _), _ = found_def
            text = doc.lines[dline] if os.path.abspath(path) == os.path.abspath(doc.path) \
                else _line_of(path, dline)
            where = "" if os.path.abspath(path) == os.path.abspath(doc.path) else \
                f"\n\nin `{os.path.relpath(path, os.path.dirname(os.path.abspath(doc.path)))}`"
            return f"```fpol\n{text.strip()}\n```{where}"
        return None
    if word in HEADER_VALUES:
        return f"**{word}**: " + ", ".join(f"`{v}`" for v in HEADER_VALUES[word])
    if word in KEYWORD_DOCS:
        return f"**{word}**: {KEYWORD_DOCS[word]}"
    return None


def _line_of(path: str, line: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().split("\n")[line]
    except (OSError, IndexError):
        return ""


# completion ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    label: str
    kind: str  # keyword | op | group | errno | value | name
    detail: str = ""


def _keywords() -> list[str]:
    try:
        from fpol.compiler.parser import keywords

        return sorted(keywords())
    except Exception:
        return sorted(set(ACTIONS) | set(CLAUSES) | set(HEADER_VALUES) | {"policy"})


def _machine_names(kind: str) -> list[str]:
    from fpol.compiler.analyse import _machine_names as names

    return sorted(set(names(kind)))[:500]


def _defined_names(text: str) -> list[str]:
    return sorted(set(_DEFINE.findall(text)))


def _statement_before(doc: Document, line: int, col: int) -> str:
    """The logical line's text before the cursor (continuation lines joined)."""
    if not 0 <= line < len(doc.lines):
        return ""
    before = doc.lines[line][:col]
    n = line - 1
    while n >= 0:
        prev = doc.lines[n].split("#", 1)[0].rstrip()
        if not prev.endswith("\\"):
            break
        before = prev[:-1] + " " + before
        n -= 1
    return before.split("#", 1)[0] if '"' not in before else before


def completions(doc: Document, line: int, col: int) -> list[Item]:
    """What may be typed at (line, col): the grammar's next words, as far as the text says."""
    from fpol.compiler.analyse import ERRNOS

    before = _statement_before(doc, line, col)
    tokens = _TOKEN.findall(before)
    partial = ""
    if tokens and not before[-1:].isspace() and tokens[-1] != ",":
        partial = tokens.pop()  # the word being typed
    keywords = _keywords()
    ops_items = [Item(g, "group", "op group") for g in ops.GROUPS] + \
        [Item(o, "op", "op") for o in ops.SINGLE_OPS if o not in ops.GROUPS]
    if partial.startswith("$") or (tokens and tokens[-1] in ("under", "at", "matching", "named",
                                                              "include")):
        return [Item(f"${n}", "name", "defined name") for n in _defined_names(doc.text)]
    if not tokens:
        first = [k for k in keywords if k not in CLAUSES and k not in SUBJECT_KINDS and k not in
                 ("to", "userspace", "before", "after", "instead")]
        return [Item(k, "keyword", "statement") for k in first]
    head, last = tokens[0], tokens[-1]
    if head in ("abi", "mode", "names") and len(tokens) == 1:
        return [Item(v, "value", f"{head} value") for v in HEADER_VALUES[head]]
    if head == "default" and len(tokens) == 1:
        return [Item(v, "keyword", "default action") for v in HEADER_VALUES["default"]]
    if last == "with":
        common = [Item(e, "errno", os.strerror(ERRNOS[e])) for e in COMMON_ERRNOS]
        rest = [Item(e, "errno", os.strerror(v)) for e, v in sorted(ERRNOS.items())
                if e not in COMMON_ERRNOS]
        return common + rest
    if last == "to":
        return [Item("userspace", "keyword", "redirect target")]
    if head in ACTIONS and last == "," and len(tokens) > 3 and tokens[-3] in SUBJECT_KINDS:
        # `by uid 5, |`: another subject (and in `except`, a scope or `by`)
        items = [Item(k, "keyword", "subject") for k in SUBJECT_KINDS]
        if "except" in tokens:
            items += [Item(c, "keyword", "scope") for c in CLAUSES[:4]] + [Item("by", "keyword", "subject")]
        return items
    if head in ACTIONS and last == "by":
        return [Item(k, "keyword", "subject") for k in SUBJECT_KINDS]
    if head in ACTIONS and last in ("user", "group") and len(tokens) > 1 and tokens[-2] in (
            "by", ","):
        return [Item(n, "value", f"{last} on this machine") for n in _machine_names(last)]
    if last == "userspace":
        return [Item(m, "keyword", "userspace mode") for m in ("before", "after", "instead")] + \
            [Item(c, "keyword", "clause") for c in CLAUSES[:5] + ("by",)]
    if head == "default":
        if tokens[1:2] == ["deny"]:
            return [Item("with", "keyword", "errno")]
        if tokens[1:2] == ["redirect"]:
            return [Item("to", "keyword", "to userspace")]
        return []
    if head in ACTIONS:
        if len(tokens) == 1 or last == ",":
            in_ops = all(t == "," or t in ops.OP_NAMES or i == 0 for i, t in enumerate(tokens))
            if in_ops or len(tokens) == 1:
                return ops_items
        if last == "except":
            return [Item(c, "keyword", "scope") for c in CLAUSES[:4]] + \
                [Item("by", "keyword", "subject")]
        items = [Item(c, "keyword", "clause") for c in CLAUSES]
        if head == "redirect" and "to" not in tokens:
            items.insert(0, Item("to", "keyword", "to userspace"))
        return items
    return []


# go to definition ---------------------------------------------------------------------------

_INCLUDE = re.compile(r'^([ \t\f]*include[ \t\f]+)("(?:\\.|[^"\\])*"|[^\s#"]+)', re.M)


def _unquote(raw: str) -> str:
    return raw[1:-1].replace('\\"', '"').replace("\\\\", "\\") if raw.startswith('"') else raw


def _include_target(including: str, raw: str) -> str:
    """The file an include names, relative to the including file (as compiler/include.py)."""
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(including)),
                                         _unquote(raw)))


def _find_define(text: str, name: str) -> Optional[tuple[int, int]]:
    m = re.search(rf"^([ \t\f]*define[ \t\f]+){re.escape(name)}(?![A-Za-z0-9_.-])", text, re.M)
    if m is None:
        return None
    line = text.count("\n", 0, m.start())
    return line, len(m.group(1))


def definition(doc: Document, line: int, col: int):
    """Where the thing at (line, col) is defined: (file, start, end) or None. An include's
    path goes to the file; `$NAME` to its `define`, in this file or one it includes."""
    if not 0 <= line < len(doc.lines):
        return None
    m = _INCLUDE.match(doc.lines[line])
    if m and m.start(2) <= col <= m.end(2):
        target = _include_target(doc.path, m.group(2))
        return (target, (0, 0), (0, 0)) if os.path.isfile(target) else None
    found = word_at(doc, line, col)
    if found is None or not found[0].startswith("$"):
        return None
    ref = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)", found[0])
    if ref is None:
        return None
    name = ref.group(1)
    seen: set[str] = set()
    queue = [(os.path.abspath(doc.path), doc.text)]
    while queue:  # this file first, then what it includes, breadth first
        path, text = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        at = _find_define(text, name)
        if at is not None:
            return path, at, (at[0], at[1] + len(name))
        for inc in _INCLUDE.finditer(text):
            target = _include_target(path, inc.group(2))
            try:
                with open(target, encoding="utf-8", errors="replace") as f:
                    queue.append((target, f.read()))
            except OSError:
                continue
    return None


# formatting and quick fixes -----------------------------------------------------------------

def formatted(doc: Document) -> Optional[str]:
    """The canonical text, or None while the document has syntax or encoding errors."""
    from fpol.compiler.diagnostics import Reporter
    from fpol.compiler.fmt import format_policy
    from fpol.compiler.parser import parse

    reporter = Reporter(doc.path)
    try:
        doc.text.encode("utf-8")
        data: "bytes | str" = doc.text
    except UnicodeEncodeError:
        data = doc.text.encode("utf-8", "surrogatepass")
    tree, _, _ = parse(data, doc.path, reporter)
    if reporter.has_errors:
        return None
    return format_policy(tree)


def quick_fixes(doc: Document, start: tuple[int, int], end: tuple[int, int]) -> list[Problem]:
    """Problems overlapping the range whose hint names a replacement."""
    return [p for p in doc.problems
            if p.fix is not None and p.start <= end and start <= p.end]


# --- the server -------------------------------------------------------------------------------

def uri_path(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return uri  # an unsaved buffer: includes resolve against the working directory


def _utf16(line: str, col: int) -> int:
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in line[:col])


def _from_utf16(line: str, units: int) -> int:
    n = 0
    for i, ch in enumerate(line):
        if n >= units:
            return i
        n += 2 if ord(ch) > 0xFFFF else 1
    return len(line)


def build_server():
    from lsprotocol import types as t
    from pygls.lsp.server import LanguageServer

    from fpol import __version__

    server = LanguageServer("fpol", __version__, text_document_sync_kind=t.TextDocumentSyncKind.Full)
    docs: dict[str, Document] = {}

    def pos(doc: Document, p: tuple[int, int]) -> "t.Position":
        line = min(p[0], len(doc.lines) - 1)
        return t.Position(line=line, character=_utf16(doc.lines[line], p[1]))

    def rng(doc: Document, a, b) -> "t.Range":
        return t.Range(start=pos(doc, a), end=pos(doc, b))

    def at(doc: Document, p: "t.Position") -> tuple[int, int]:
        line = min(max(p.line, 0), len(doc.lines) - 1)
        return line, _from_utf16(doc.lines[line], p.character)

    def log(msg: str) -> None:
        try:
            server.window_log_message(t.LogMessageParams(type=t.MessageType.Error, message=msg))
        except Exception:
            pass

    def guarded(fn):
        def run(ls, params):
            try:
                return fn(params)
            except Exception as e:  # a bug in fpol: say so, keep serving
                import traceback

                log(f"fpol lsp: {type(e).__name__}: {e}\n{traceback.format_exc()}")
                return None
        run.__name__ = fn.__name__
        return run

    def text_of(uri: str) -> str:
        return server.workspace.get_text_document(uri).source

    def checked_doc(uri: str) -> Document:
        """The checked document for the text as it is now (the last check when it is
        current, else a check here and now)."""
        text = text_of(uri)
        doc = docs.get(uri)
        if doc is None or doc.text != text:
            doc = docs[uri] = Document(text, uri_path(uri))
        return doc

    def text_doc(uri: str) -> Document:
        return Document(text_of(uri), uri_path(uri), check=False)

    def publish(uri: str, doc: Document, version: Optional[int]) -> None:
        diagnostics = []
        for p in doc.problems:
            diagnostics.append(t.Diagnostic(
                range=rng(doc, p.start, p.end), message=diagnostic_text(p),
                severity=t.DiagnosticSeverity.Error if p.severity == ERROR
                else t.DiagnosticSeverity.Warning,
                code=p.code, source="fpol",
                related_information=[t.DiagnosticRelatedInformation(
                    location=t.Location(uri=uri, range=rng(doc, a, b)), message=m)
                    for m, a, b in p.related] or None,
                data={"fix": p.fix} if p.fix else None))
        server.text_document_publish_diagnostics(
            t.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics, version=version))

    # Checks run in a worker thread, one at a time per document, so the server keeps
    # answering while a large policy is checked; edits made meanwhile are coalesced into
    # one more check of the latest text.
    open_uris: set[str] = set()
    running: set[str] = set()
    stale: set[str] = set()

    async def refresh(uri: str) -> None:
        if uri in running:
            stale.add(uri)
            return
        running.add(uri)
        try:
            while uri in open_uris:
                stale.discard(uri)
                current = server.workspace.get_text_document(uri)
                text, version = current.source, current.version
                try:
                    doc = await asyncio.get_running_loop().run_in_executor(
                        None, Document, text, uri_path(uri))
                except Exception as e:
                    import traceback

                    log(f"fpol lsp: checking {uri} failed: {type(e).__name__}: {e}\n"
                        f"{traceback.format_exc()}")
                    break
                if uri not in open_uris:
                    break
                docs[uri] = doc
                if uri not in stale:
                    publish(uri, doc, version)
                    break
        finally:
            running.discard(uri)

    def refresh_async(fn):
        async def run(ls, params):
            uri = params.text_document.uri
            try:
                fn(uri)
                await refresh(uri)
            except Exception as e:  # a bug in fpol: say so, keep serving
                log(f"fpol lsp: {type(e).__name__}: {e}")
        run.__name__ = fn.__name__
        return run

    @server.feature(t.TEXT_DOCUMENT_DID_OPEN)
    @refresh_async
    def did_open(uri: str):
        open_uris.add(uri)

    @server.feature(t.TEXT_DOCUMENT_DID_CHANGE)
    @refresh_async
    def did_change(uri: str):
        open_uris.add(uri)

    @server.feature(t.TEXT_DOCUMENT_DID_SAVE)
    @refresh_async
    def did_save(uri: str):
        docs.pop(uri, None)  # included files may have changed: check again

    @server.feature(t.TEXT_DOCUMENT_DID_CLOSE)
    @guarded
    def did_close(params: t.DidCloseTextDocumentParams):
        open_uris.discard(params.text_document.uri)
        docs.pop(params.text_document.uri, None)
        server.text_document_publish_diagnostics(
            t.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[]))

    @server.feature(t.TEXT_DOCUMENT_HOVER)
    @guarded
    def on_hover(params: t.HoverParams):
        doc = checked_doc(params.text_document.uri)
        line, col = at(doc, params.position)
        text = hover(doc, line, col)
        if text is None:
            return None
        return t.Hover(contents=t.MarkupContent(kind=t.MarkupKind.Markdown, value=text))

    kinds = {"keyword": t.CompletionItemKind.Keyword, "op": t.CompletionItemKind.Function,
             "group": t.CompletionItemKind.Module, "errno": t.CompletionItemKind.Constant,
             "value": t.CompletionItemKind.EnumMember, "name": t.CompletionItemKind.Variable}

    @server.feature(t.TEXT_DOCUMENT_COMPLETION,
                    t.CompletionOptions(trigger_characters=[" ", ",", "$"]))
    @guarded
    def on_completion(params: t.CompletionParams):
        doc = text_doc(params.text_document.uri)
        line, col = at(doc, params.position)
        items = completions(doc, line, col)
        return t.CompletionList(is_incomplete=False, items=[
            t.CompletionItem(label=i.label, kind=kinds[i.kind], detail=i.detail or None,
                             sort_text=f"{n:04d}") for n, i in enumerate(items)])

    @server.feature(t.TEXT_DOCUMENT_DEFINITION)
    @guarded
    def on_definition(params: t.DefinitionParams):
        doc = text_doc(params.text_document.uri)
        line, col = at(doc, params.position)
        found = definition(doc, line, col)
        if found is None:
            return None
        path, start, end = found
        if os.path.abspath(path) == os.path.abspath(doc.path):
            return t.Location(uri=params.text_document.uri, range=rng(doc, start, end))
        # Another file: its lines as they are on disk (columns here are ASCII offsets of
        # `define NAME`, the same in any unit).
        pos = lambda p: t.Position(line=p[0], character=p[1])  # noqa: E731
        from pathlib import Path

        return t.Location(uri=Path(path).as_uri(), range=t.Range(start=pos(start), end=pos(end)))

    @server.feature(t.TEXT_DOCUMENT_FORMATTING)
    @guarded
    def on_format(params: t.DocumentFormattingParams):
        doc = text_doc(params.text_document.uri)
        text = formatted(doc)
        if text is None or text == doc.text:
            return [] if text is not None else None
        end = (len(doc.lines) - 1, len(doc.lines[-1]))
        return [t.TextEdit(range=rng(doc, (0, 0), end), new_text=text)]

    @server.feature(t.TEXT_DOCUMENT_CODE_ACTION,
                    t.CodeActionOptions(code_action_kinds=[t.CodeActionKind.QuickFix]))
    @guarded
    def on_code_action(params: t.CodeActionParams):
        uri = params.text_document.uri
        doc = checked_doc(uri)
        start, end = at(doc, params.range.start), at(doc, params.range.end)
        actions = []
        for p in quick_fixes(doc, start, end):
            assert p.fix is not None  # quick_fixes has only those with a fix
            edit = t.TextEdit(range=rng(doc, p.start, p.end), new_text=p.fix)
            actions.append(t.CodeAction(
                title=f"Replace with `{p.fix}` ({p.code})", kind=t.CodeActionKind.QuickFix,
                is_preferred=True,
                diagnostics=[d for d in params.context.diagnostics if d.code == p.code] or None,
                edit=t.WorkspaceEdit(changes={uri: [edit]})))
        return actions

    return server


def run_command(args) -> int:
    try:
        server = build_server()
    except ImportError as e:
        import sys

        print(f"fpol: the language server needs pygls and lsprotocol ({e}); "
              "install fpol[lsp]", file=sys.stderr)
        return 3
    server.start_io()
    return 0

