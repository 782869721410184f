"""Semantic analysis: PolicyFile (AST) -> Policy, with diagnostics.

Resolves headers, expands op names and groups to atoms, normalises paths and
globs, resolves errnos, and checks what the ABI can deliver (redirect modes,
daemon-less mounts). Warnings that need the class tree live in compiler/lint.py.
"""

from __future__ import annotations

import dataclasses
import errno as errno_module
import itertools
import os
import re
from typing import Optional

from . import ast, ops
from .diagnostics import Reporter, did_you_mean
from .fmt import parse_id, render_rule, render_scope, render_subject
from .paths import ANY, PathProblem, glob_patterns, name_patterns, normalise_path, render_path
from .policy import Default, Policy, Rule, Subject, Term, pattern_specificity
from .subjects import ID_LIMIT

ABIS = ("v3", "v4")
MODES = ("enforce", "complain")
NAMES = ("case-sensitive", "case-insensitive")
POLICY_NAME = re.compile(r"[a-z0-9_]+")
POLICY_NAME_MAX = 8

# Every errno Linux knows, by name.
ERRNOS: dict[str, int] = {name: getattr(errno_module, name) for name in dir(errno_module)
                          if name.startswith("E") and name.isupper()}
DEFAULT_DENY_ERRNO = "EACCES"
# Aliases name one value; these are the names Linux's own headers spell out.
_PREFERRED = {"EOPNOTSUPP", "EAGAIN", "EDEADLK"}
CANONICAL_ERRNO: dict[int, str] = {}
for _name, _value in sorted(ERRNOS.items()):
    if _value not in CANONICAL_ERRNO or _name in _PREFERRED:
        CANONICAL_ERRNO[_value] = _name


def canonical_errno(name: str) -> str:
    return CANONICAL_ERRNO[ERRNOS[name]]

# What the daemon-filter wire format can deliver (spec §9). `before` (USER_PREFILTER)
# fails in the RFC for ops whose last in-arg is an immutable non-final buffer or that
# have no in-args; `after` (USER_POSTFILTER) needs out-args to send back.
BEFORE_UNSUPPORTED = frozenset({"rename", "symlink", "unlink", "rmdir", "statfs"})
AFTER_SUPPORTED = frozenset({"lookup", "getattr", "setattr", "open", "opendir", "create",
                             "read", "write", "lseek", "copy_file_range", "getxattr",
                             "listxattr", "statfs", "readdir"})


def analyse(tree: ast.PolicyFile, reporter: Reporter, no_daemon: bool = False,
            included: tuple[ast.PolicyFile, ...] = (),
            statements: Optional[list[tuple[str, ast.Statement]]] = None) -> Policy:
    """Resolve the tree (and the trees of the files it includes, compiler/include.py;
    `statements` is every file's statements in the order rules are numbered, an included
    file's in place of its include). Problems go to the reporter; the Policy returned is
    valid only if the reporter has no errors."""
    headers = _headers(tree, reporter)
    default = _default(tree, reporter, no_daemon)
    for sub in included:
        _headers_in_include(sub, reporter.for_file(sub.file))
    trees = (tree,) + tuple(included)
    defs = _definitions(trees, reporter)
    rules: list[Rule] = []
    meanings: list[object] = []  # per rule, what makes two rules the same (_meaning)
    seen = _Seen()
    if statements is None:
        statements = [(t.file, st) for t in trees for st in t.statements]
    for file, st in statements:
        if isinstance(st, ast.Rule):
            here = reporter.for_file(file)
            alternatives = _expand(st, defs, here)
            for concrete in alternatives:
                rule = _rule(concrete, len(rules), here, no_daemon, seen)
                if rule is not None:
                    if len(alternatives) > 1:
                        rule = dataclasses.replace(rule, expanded=True)
                    rules.append(rule)
                    meanings.append(_meaning(concrete, rule))
    defs.report_unused()
    _duplicates(rules, meanings, reporter)
    return Policy(
        file=tree.file,
        name=headers.get("policy") or default_policy_name(tree.file),
        abi=headers.get("abi") or "v4",
        mode=headers.get("mode") or "enforce",
        default=default,
        case_insensitive=headers.get("names") == "case-insensitive",
        rules=tuple(rules),
    )


def _headers_in_include(tree: ast.PolicyFile, reporter: Reporter) -> None:
    for st in tree.statements:
        if isinstance(st, (ast.Header, ast.Default)):
            keyword = st.keyword if isinstance(st, ast.Header) else "default"
            reporter.add("FP032", f"`{keyword}` belongs to the top file of a policy, not to an "
                         "included file", st.span,
                         f"move `{keyword}` into the file that includes this one")


# --- definitions (LANGUAGE.md §7) ------------------------------------------------------

class _Definitions:
    """Every `define` of every file of the policy: one namespace, order-free."""

    def __init__(self):
        self.where: dict[str, tuple[ast.Define, Reporter]] = {}
        self.values: dict[str, Optional[tuple[bytes, ...]]] = {}
        self.used: set[str] = set()
        self.misspelt = False  # some `$NAME` was undefined: "never used" would be noise

    def resolve(self, name: str, stack: tuple[str, ...] = ()) -> Optional[tuple[bytes, ...]]:
        """The values of a name, definitions within definitions substituted (None: broken)."""
        if name in self.values:
            return self.values[name]
        st, reporter = self.where[name]
        if name in stack:
            return None
        out: list[bytes] = []
        ok = True
        for lit in st.values:
            ref = lit.ref
            if ref is None:
                out.append(lit.value)
                continue
            inner, rest = ref
            if inner in self.where:
                self.used.add(inner)
            if inner == name or inner in stack:
                chain = " -> ".join(stack[stack.index(inner):] + (name, inner)) if inner in stack \
                    else f"{name} -> {name}"
                reporter.add("FP035", f"definition cycle: {chain}", lit.span,
                             "a definition cannot refer to itself, directly or through others")
                ok = False
                continue
            if inner not in self.where:
                self.undefined(inner, lit, reporter)
                ok = False
                continue
            self.used.add(inner)
            values = self.resolve(inner, stack + (name,))
            if values is None:
                ok = False
                continue
            out.extend(v + rest for v in values)
        result = tuple(dict.fromkeys(out)) if ok else None
        self.values[name] = result
        return result

    def undefined(self, name: str, lit: ast.PathLit, reporter: Reporter) -> None:
        self.misspelt = True
        if not name:
            reporter.add("FP035", "`$` must be followed by a defined name", lit.span,
                         "write `$NAME` (or `${NAME}`) with a name defined by "
                         "`define NAME = PATH`, or \\x24 in a quoted path for a literal `$`")
            return
        hint = did_you_mean(name, self.where) or (
            f"define it: `define {name} = /some/path`" if not self.where
            else "defined names: " + ", ".join(f"`{n}`" for n in sorted(self.where)[:8]))
        reporter.add("FP033", f"undefined name `${name}`", lit.span, hint)

    def report_unused(self) -> None:
        if self.misspelt:
            return
        for name, (st, reporter) in sorted(self.where.items()):
            if name not in self.used and self.values.get(name) is not None:
                reporter.add("FP108", f"`{name}` is defined but never used", st.name.span,
                             f"use it as `${name}/...` at the start of a path, or delete it")


_DEF_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _definitions(trees: tuple[ast.PolicyFile, ...], reporter: Reporter) -> _Definitions:
    defs = _Definitions()
    for t in trees:
        here = reporter.for_file(t.file)
        for st in t.statements:
            if not isinstance(st, ast.Define):
                continue
            name = st.name.text
            if not _DEF_NAME.fullmatch(name):
                fixed = re.sub(r"[^A-Za-z0-9_]", "_", name)
                if fixed[0].isdigit():
                    fixed = "_" + fixed
                here.add("FP035", f"`{name}` is not a valid name", st.name.span,
                         f"names are letters, digits and `_`, not starting with a digit: "
                         f"try `{fixed}`")
                continue
            if name in defs.where:
                first, first_reporter = defs.where[name]
                related = (("first defined here", first.span, first_reporter.file),)
                here.add("FP034", f"`{name}` is defined more than once", st.name.span,
                         "keep one `define`; list every value in it: "
                         f"`define {name} = PATH, PATH`", related=related)
                continue
            defs.where[name] = (st, here)
    for name in list(defs.where):
        defs.resolve(name)
    return defs


def _expand(st: ast.Rule, defs: _Definitions, reporter: Reporter) -> list[ast.Rule]:
    """A rule with `$NAME` paths as the rules it stands for: each scope using a definition
    with k values makes k rules (alternatives); in `except`, k excepted scopes."""
    if not any(s.path.ref is not None for s in st.scopes) and \
            not any(s.path.ref is not None for c in st.excepts for s in c):
        return [st]
    ok = True

    def values(scope: ast.Scope) -> list[ast.Scope]:
        nonlocal ok
        ref = scope.path.ref
        if ref is None:
            return [scope]
        name, rest = ref
        if name not in defs.where:
            defs.undefined(name, scope.path, reporter)
            ok = False
            return []
        defs.used.add(name)
        vals = defs.resolve(name)
        if vals is None:
            ok = False
            return []
        out = []
        for v in vals:
            value = v + rest
            lit = ast.PathLit(render_path(value, force_quotes=True), value, True, scope.path.span)
            out.append(ast.Scope(scope.kind, lit, scope.span))
        return out

    alternatives = [values(s) for s in st.scopes]
    excepts = tuple(tuple(x for s in clause for x in values(s)) for clause in st.excepts)
    if not ok:
        return []
    out: list[ast.Rule] = []
    seen: set[str] = set()
    for combo in itertools.product(*alternatives):
        rule = dataclasses.replace(st, scopes=tuple(combo), excepts=excepts)
        text = render_rule(rule)
        if text not in seen:  # `define d = /a, /a`: one rule
            seen.add(text)
            out.append(rule)
    return out


def default_policy_name(file: str) -> str:
    """A policy without `policy NAME` takes its name from the file: `My-Secrets.fpol` -> `my_secre`."""
    stem = os.path.basename(file).split(".")[0].lower()
    name = re.sub(r"[^a-z0-9_]", "_", stem)[:POLICY_NAME_MAX]
    return name or "fpol"


def _headers(tree: ast.PolicyFile, reporter: Reporter) -> dict[str, str]:
    seen: dict[str, ast.Header] = {}
    values: dict[str, str] = {}
    first_default: Optional[ast.Default] = None
    for st in tree.statements:
        if isinstance(st, ast.Default):
            if first_default is not None:
                reporter.add("FP006", "more than one `default` statement", st.span,
                             "keep one `default` line", related=(("first `default` here", first_default.span),))
            else:
                first_default = st
        if not isinstance(st, ast.Header):
            continue
        if st.keyword in seen:
            reporter.add("FP006", f"more than one `{st.keyword}` statement", st.span,
                         f"keep one `{st.keyword}` line",
                         related=((f"first `{st.keyword}` here", seen[st.keyword].span),))
            continue
        seen[st.keyword] = st
        value = st.value.text
        if st.keyword == "policy":
            if not POLICY_NAME.fullmatch(value):
                reporter.add("FP007", f"policy name `{value}` may use only a-z, 0-9 and _",
                             st.value.span, "instance names are built from it: "
                             f"try `{re.sub(r'[^a-z0-9_]', '_', value.lower())[:POLICY_NAME_MAX]}`")
                continue
            if len(value) > POLICY_NAME_MAX:
                reporter.add("FP008", f"policy name `{value}` has {len(value)} characters; "
                             f"at most {POLICY_NAME_MAX} fit", st.value.span,
                             "fuse-bpf instance names are at most 14 characters and carry a class "
                             f"number; try `{value[:POLICY_NAME_MAX]}`")
                continue
        else:
            allowed = {"abi": ABIS, "mode": MODES, "names": NAMES}[st.keyword]
            if value not in allowed:
                hint = did_you_mean(value, allowed) or "one of " + ", ".join(f"`{a}`" for a in allowed)
                reporter.add("FP005", f"unknown {st.keyword} `{value}`", st.value.span, hint)
                continue
        values[st.keyword] = value
    return values


def _default(tree: ast.PolicyFile, reporter: Reporter, no_daemon: bool) -> Default:
    st = next((s for s in tree.statements if isinstance(s, ast.Default)), None)
    if st is None:
        return Default("allow", None, None, "allow")
    action = st.action.text
    if action == "deny":
        errno = _errno(st.errno, reporter) if st.errno else DEFAULT_DENY_ERRNO
        return Default("deny", errno, st.span.line,
                       "deny" + (f" with {errno}" if st.errno and errno else ""))
    if action == "redirect":
        if st.target is None:
            reporter.add("FP021", "`default redirect` needs `to userspace`", st.span,
                         "write `default redirect to userspace`")
        elif st.target.mode in ("before", "after"):
            reporter.add("FP022", f"`default redirect` cannot be `{st.target.mode}`: the default "
                         "covers every op, and not every op can go to userspace that way",
                         st.target.span, "use plain `default redirect to userspace`")
        if no_daemon:
            reporter.add("FP025", "`default redirect to userspace` needs a daemon, but this "
                         "policy is checked for a daemon-less (no_daemon) mount", st.span,
                         "mount with the daemon, or choose another default")
        return Default("userspace", None, st.span.line, "redirect to userspace")
    return Default("allow", None, st.span.line, "allow")


def _errno(word: ast.Word, reporter: Reporter) -> Optional[str]:
    if word.text in ERRNOS:
        # Aliases (ENOTSUP and EOPNOTSUPP) are one errno: keep one name for each value.
        name = canonical_errno(word.text)
        if name == "ENOSYS":
            reporter.add("FP107", "`with ENOSYS` reaches applications as ENOSYS only on fuse-bpf: "
                         "through the daemon it is replied as EOPNOTSUPP, because FUSE reads "
                         "ENOSYS as \"not implemented\" and stops asking", word.span,
                         "use EOPNOTSUPP (or EPERM/EACCES) so both paths deny alike")
        return name
    hint = did_you_mean(word.text, ERRNOS) or "errnos are symbolic names such as EACCES, EPERM, EROFS"
    reporter.add("FP004", f"unknown errno `{word.text}`", word.span, hint)
    return None


class _Seen:
    """The atoms of each op list and the term of each scope, worked out once per analysis:
    rules share them (at 10,000 realistic rules, 11,511 scopes are 8,080 different ones
    and the op lists a dozen). Only what resolved cleanly is kept, so a bad scope or op is
    reported again wherever it is written."""

    def __init__(self):
        self.atoms: dict[tuple[str, ...], frozenset[str]] = {}
        self.terms: dict[tuple[str, str, bytes, bool], Term] = {}


def _atoms(words: tuple[ast.Word, ...], reporter: Reporter, seen: _Seen
           ) -> Optional[frozenset[str]]:
    key = tuple(w.text for w in words)
    known = seen.atoms.get(key)
    if known is not None:
        return known
    atoms: set[str] = set()
    ok = True
    for w in words:
        if w.text in ops.EXPANSION:
            atoms |= ops.EXPANSION[w.text]
            continue
        ok = False
        hint = did_you_mean(w.text, ops.OP_NAMES) or (
            "ops are fuse_ops hooks (open, mkdir, ...) or groups (read, write, create, delete, "
            "list, stat, exec, all); see `fpol check --help`")
        reporter.add("FP003", f"unknown operation or group `{w.text}`", w.span, hint)
    if not ok:
        return None
    known = seen.atoms[key] = frozenset(atoms)
    return known


def _term(scope: ast.Scope, reporter: Reporter, seen: _Seen) -> Optional[Term]:
    # The term depends on the scope's kind and path as written (`ref` too is read from
    # these), not on where it stands.
    key = (scope.kind, scope.path.raw, scope.path.value, scope.path.quoted)
    known = seen.terms.get(key)
    if known is not None:
        return known
    try:
        if scope.kind in ("under", "at"):
            comps = normalise_path(scope.path.value)
            patterns: tuple[tuple, ...] = (comps + ((ANY,) if scope.kind == "under" else ()),)
        elif scope.kind == "matching":
            patterns = glob_patterns(scope.path.value)
        else:
            patterns = tuple((ANY, part) for part in name_patterns(scope.path.value))
    except PathProblem as p:
        reporter.add(p.code, p.message, scope.path.span, p.hint)
        return None
    spec = min(pattern_specificity(p) for p in patterns)
    known = seen.terms[key] = Term(scope.kind, patterns, render_scope(scope), spec)
    return known


def _rule(st: ast.Rule, index: int, reporter: Reporter, no_daemon: bool, seen: _Seen
          ) -> Optional[Rule]:
    """One statement -> one Rule, or None after its diagnostics: every clause in turn
    (ops, target, scopes, excepts, subjects, errno), each with its own checks."""
    errors_before = len([d for d in reporter.items if d.is_error])
    # The parser may already have found errors in this statement (a bad string
    # escape, a bad byte): then the rule is not what was meant, and building it
    # would only add noise such as a false duplicate-rule warning.
    parse_errors = any(d.is_error and d.file == reporter.file
                       and st.span.line <= d.span.line <= st.span.end_line
                       for d in reporter.items)
    action = st.action.text
    atoms = _atoms(st.ops, reporter, seen)

    mode = None
    if action == "redirect":
        if st.target is None:
            reporter.add("FP021", "`redirect` needs `to userspace`", st.action.span,
                         "write e.g. `redirect lookup to userspace` (add `before` or `after` "
                         "to keep the kernel doing the op)")
        else:
            mode = st.target.mode or "instead"
        if no_daemon:
            reporter.add("FP025", "this rule sends requests to userspace, but the policy is "
                         "checked for a daemon-less (no_daemon) mount", st.span,
                         "mount with the daemon, or use allow/deny")
    elif st.target is not None:
        reporter.add("FP021", f"`to userspace` belongs to `redirect`, not `{action}`",
                     st.target.span, "write `redirect ... to userspace`, or drop `to userspace`")

    errno = None
    if len(st.errnos) > 1:
        reporter.add("FP020", "more than one `with` clause", st.errnos[1].span,
                     "a rule denies with one errno")
    if st.errnos:
        if action != "deny":
            reporter.add("FP020", f"`with {st.errnos[0].text}` on a rule that does not deny",
                         st.errnos[0].span, "only `deny` rules (and `default deny`) take an errno")
        else:
            errno = _errno(st.errnos[0], reporter)
    elif action == "deny":
        errno = DEFAULT_DENY_ERRNO

    if atoms is not None and mode in ("before", "after"):
        op_names = {ops.atom_op(a) for a in atoms}
        if mode == "before":
            bad = sorted(op_names & BEFORE_UNSUPPORTED, key=ops.SINGLE_OPS.index)
        else:
            bad = sorted(op_names - AFTER_SUPPORTED, key=ops.SINGLE_OPS.index)
        if bad:
            names = ", ".join(bad)
            assert st.target is not None  # it gave the mode
            reporter.add("FP022", f"fuse-bpf cannot send {names} to userspace `{mode}` the kernel "
                         f"op (spec §9)", st.target.span,
                         f"list only ops that support `{mode}`, or use plain `to userspace`")

    # Optional[Term]s, None where a scope is wrong (then no rule is made)
    terms: list = [_term(s, reporter, seen) for s in st.scopes]
    excepts: list = [_term(s, reporter, seen) for clause in st.excepts for s in clause]
    subjects = _rule_subjects(st, reporter)
    errors_after = len([d for d in reporter.items if d.is_error])
    if parse_errors or errors_after != errors_before or atoms is None or None in terms \
            or None in excepts or subjects is None:
        return None
    terms = _essential(terms)
    return Rule(
        index=index, line=st.span.line, span=st.span, text=_canonical_text(st, terms, errno),
        file=reporter.file,
        action=action,
        atoms=atoms, mode=mode, errno=errno, terms=tuple(terms), excepts=tuple(excepts),
        specificity=sum(t.specificity for t in terms),
        subjects=subjects[0], except_subjects=subjects[1],
    )


# --- subjects (LANGUAGE.md §6) ----------------------------------------------------------

ID_MAX = ID_LIMIT - 2  # 4294967294: (uid_t)-1 means "no id" to the kernel
_ALL_IDS = ((0, ID_MAX),)
_NAME_KIND = {"user": "uid", "group": "gid"}


def _machine_names(kind: str) -> list[str]:
    """Every user (or group) name this machine knows, for did-you-mean."""
    try:
        if kind == "user":
            import pwd

            return [p.pw_name for p in pwd.getpwall()]
        import grp

        return [g.gr_name for g in grp.getgrall()]
    except (ImportError, OSError):  # not a Unix machine, or no name service
        return []


def resolve_name(kind: str, name: str) -> Optional[int]:
    """The uid of user `name` (or gid of group `name`) on this machine, None if unknown."""
    try:
        if kind == "user":
            import pwd

            return pwd.getpwnam(name).pw_uid
        import grp

        return grp.getgrnam(name).gr_gid
    except (KeyError, ImportError, OSError, ValueError):  # ValueError: a NUL in the name
        return None


def _subject(item: ast.SubjectItem, reporter: Reporter) -> Optional[Subject]:
    """One written subject, checked and resolved (None: an error was reported)."""
    kind, value, span = item.kind, item.value.text, item.value.span
    if kind in _NAME_KIND:
        number = resolve_name(kind, value)
        if number is None:
            axis = _NAME_KIND[kind]
            hint = did_you_mean(value, _machine_names(kind))
            if hint is None and parse_id(value) is not None:
                hint = f"for a number write `{axis} {value}`"
            if hint is None:
                database = "passwd" if kind == "user" else "group"
                hint = (f"{kind} names are looked up in this machine's {database} database when "
                        f"the policy is checked; create the {kind}, or write `{axis} N`")
            reporter.add("FP036", f"unknown {kind} `{value}` on this machine", span, hint)
            return None
        return Subject(_NAME_KIND[kind], number, number, f"{kind} {value}")
    ids = parse_id(value)
    if ids is None:
        name_kind = "user" if kind == "uid" else "group"
        hint = None
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", value):
            hint = (f"did you mean `{name_kind} {value}`?"
                    if resolve_name(name_kind, value) is not None
                    else f"for a {name_kind} name write `{name_kind} NAME`")
        # The whole item: the did-you-mean fix (`user NAME`) replaces `uid NAME`.
        reporter.add("FP037", f"`{value}` is not a {kind} or a {kind} range", item.span,
                     hint or f"write a decimal id, `{kind} 1000`, or an inclusive range, "
                             f"`{kind} 1000-1999`")
        return None
    low, high = ids
    bad = False
    for bound in dict.fromkeys((low, high)):
        if bound > ID_MAX:
            reporter.add("FP039", f"{kind} {bound} is out of range: ids go up to {ID_MAX}", span,
                         f"{kind}s are 32-bit and {ID_MAX + 1} means \"no id\"; "
                         f"use an id from 0 to {ID_MAX}")
            bad = True
    if low > high:
        reporter.add("FP038", f"empty {kind} range `{value}`: {low} is above {high}", span,
                     f"write the lower id first: `{kind} {high}-{low}`")
        bad = True
    return None if bad else Subject(kind, low, high, render_subject(item))


def _canonical_subjects(subjects: list[Subject]) -> tuple[Subject, ...]:
    """One order for every spelling (uid items, then gid; by number), each range once."""
    out: dict[tuple, Subject] = {}
    for s in sorted(subjects, key=lambda s: (s.kind != "uid", s.low, s.high, s.text)):
        out.setdefault((s.kind, s.low, s.high), s)
    return tuple(out.values())


def _repeats(items: list[tuple[ast.SubjectItem, Subject]], where: str,
             reporter: Reporter) -> None:
    """FP109: an item that another item of the same list already covers."""
    for i, (item, s) in enumerate(items):
        for j, (other, o) in enumerate(items):
            if i == j or o.kind != s.kind or not (o.low <= s.low and s.high <= o.high):
                continue
            same = (o.low, o.high) == (s.low, s.high)
            if same and j > i:
                continue  # the later of two equal items is the repeat
            if same and item.text == other.text:
                message = f"`{item.text}` is listed twice in this {where}"
            elif same:
                message = f"`{item.text}` is the same requester as `{other.text}` ({o.numeric()})"
            else:
                message = f"`{item.text}` is already in `{other.text}`"
            reporter.add("FP109", message, item.span,
                         f"delete `{item.text}`: a requester matching any item of the list "
                         "matches the list", related=((f"`{other.text}` here", other.span),))
            break


def _merged(spans) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for low, high in sorted(spans):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def _covered(cover, spans) -> bool:
    """Is every id of `spans` in `cover`?"""
    merged = _merged(cover)
    return all(any(lo <= low and high <= hi for lo, hi in merged) for low, high in spans)


def _applies_to_nobody(by: tuple[Subject, ...], excepted: tuple[Subject, ...]) -> bool:
    """The rule applies to (uid in U or gid in G, or anyone without a `by` list) with uid
    not in XU and gid not in XG; empty exactly when this says so (ids up to ID_MAX)."""
    u = [(s.low, s.high) for s in by if s.kind == "uid"]
    g = [(s.low, s.high) for s in by if s.kind == "gid"]
    xu = [(s.low, s.high) for s in excepted if s.kind == "uid"]
    xg = [(s.low, s.high) for s in excepted if s.kind == "gid"]
    no_uid, no_gid = _covered(xu, _ALL_IDS), _covered(xg, _ALL_IDS)
    if not by:
        return no_uid or no_gid
    return (_covered(xu, u) or no_gid) and (_covered(xg, g) or no_uid)


def _removes_nothing(by: tuple[Subject, ...], s: Subject) -> bool:
    """Does `except by s` miss every requester the `by` list names?"""
    if not by or any(o.kind != s.kind for o in by):
        return False  # everyone, or items on the other axis: s meets some of them
    return all(o.high < s.low or s.high < o.low for o in by)


def _rule_subjects(st: ast.Rule, reporter: Reporter
                   ) -> Optional[tuple[tuple[Subject, ...], tuple[Subject, ...]]]:
    """The rule's `by` alternatives and `except by` items, resolved (None: errors)."""
    if not st.subjects and not st.except_subjects:
        return (), ()
    if len(st.subjects) > 1:
        reporter.add("FP040", "more than one `by` list in one rule", st.subjects[1].span,
                     "write one list; a requester matching any item matches it: "
                     "`by uid 5, gid 7`", related=(("first `by` list here", st.subjects[0].span),))
    ok = True
    lists = []
    for items in ([i for by in st.subjects for i in by.items], list(st.except_subjects)):
        resolved = []
        for item in items:
            s = _subject(item, reporter)
            if s is None:
                ok = False
            else:
                resolved.append((item, s))
        lists.append(resolved)
    if not ok:
        return None
    _repeats(lists[0], "`by` list", reporter)
    _repeats(lists[1], "`except`", reporter)
    by = _canonical_subjects([s for _, s in lists[0]])
    excepted = _canonical_subjects([s for _, s in lists[1]])
    if _applies_to_nobody(by, excepted):
        reporter.add("FP110", "this rule applies to nobody: its `except by` items remove every "
                     "requester" + (" its `by` list names" if by else ""), st.span,
                     "drop the `except by` items that cover the `by` list, or fix the ids" if by
                     else "drop the `except by` items that cover every id, or fix the ids")
    else:
        for item, s in lists[1]:
            if _removes_nothing(by, s):
                reporter.add("FP103", f"`except by {item.text}` removes nothing from this rule",
                             item.span, "the rule's `by` list does not name these requesters; "
                             "drop it or fix the id")
    return by, excepted


def _canonical_text(st: ast.Rule, terms: list[Term], errno: Optional[str]) -> str:
    """The rule as fmt prints it, minus what cannot change its meaning (scopes another
    scope implies, errno aliases): how rules are named in diagnostics and in the C."""
    text = render_rule(st)
    if st.errnos and errno:
        text = text.rsplit(" with ", 1)[0] + f" with {errno}"
    if len(terms) != len(st.scopes):
        from .fmt import render_scope

        kept = {t.text for t in terms}
        for s in st.scopes:
            scope = render_scope(s)
            if scope not in kept:
                text = text.replace(" " + scope, "", 1)
                kept.add(scope)  # a repeated scope: remove one copy only
    return text


def _essential(terms: list[Term]) -> list[Term]:
    """Drop scope terms another term implies (`under /a` beside `under /a/b`, repeats), so
    that every spelling of one scope has the same specificity."""
    kept = []
    for i, t in enumerate(terms):
        implied = any(_implies(o, t) and (not _implies(t, o) or j < i)
                      for j, o in enumerate(terms) if j != i)
        if not implied:
            kept.append(t)
    return kept


def _implies(a: Term, b: Term) -> bool:
    """Every path in term `a` is in term `b` (decided for literal under/at terms only)."""
    if a.text == b.text:
        return True
    if b.kind != "under" or a.kind not in ("under", "at"):
        return False
    (pa,), (pb,) = a.patterns, b.patterns
    prefix = pb[:-1]  # `under P` is P followed by `**`
    body = pa[:-1] if a.kind == "under" else pa
    return len(body) >= len(prefix) and tuple(body[:len(prefix)]) == tuple(prefix)


def _meaning(st: ast.Rule, rule: Rule) -> object:
    """The rule's text; with subject conditions, its text without them and the ids they
    name, so `by user root` and `by uid 0` (where root is uid 0) are one rule."""
    if not rule.has_subject:
        return rule.text
    bare = dataclasses.replace(st, subjects=(), except_subjects=())
    return (_canonical_text(bare, list(rule.terms), rule.errno),
            tuple((s.kind, s.low, s.high) for s in rule.subjects),
            tuple((s.kind, s.low, s.high) for s in rule.except_subjects))


def _duplicates(rules: list[Rule], meanings: list[object], reporter: Reporter) -> None:
    first: dict[object, Rule] = {}
    for r, key in zip(rules, meanings):
        if key in first:
            other = first[key]
            where = f"line {other.line}" if other.file == r.file else f"{other.file}:{other.line}"
            reporter.add("FP104", f"duplicate of the rule on {where}", r.span,
                         "delete one of them", related=(("first written here", other.span, other.file),),
                         file=r.file)
        else:
            first[key] = r
