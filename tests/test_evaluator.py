"""The reference evaluator against LANGUAGE.md, table-driven (in the style of libseccomp's
bpf-sim tests): each row is (policy, request, expected decision[, deciding lines]).

Expectations are written by hand from design/LANGUAGE.md and docs/language.md, never
computed from compiler/ops.py:

* MEMBERS is the op-group table (docs/language.md §5.3, LANGUAGE.md §3) spelt out over
  concrete requests (open flags, access masks, the two ends of two-path ops); every
  (selector, request) pair is a row.
* PRECEDENCE rows cover §2 / §6: deny > userspace > allow, specificity, audit, the
  default, complain mode, except, case-insensitive names, globs and braces, and the
  two-path ops with "no gain by moving".

A request is written like a line of a .cases file (`open /a flags=O_RDWR`,
`rename /a/x to /b/x`); the expected decision is exactly `Decision.short()`
(`deny EACCES`, `userspace before +audit`, `allow`), so an unexpected audit flag fails.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import NamedTuple, Optional, Union

import pytest

from fpol.compiler import ops
from fpol.compiler.cases import parse_request
from fpol.compiler.driver import check
from fpol.compiler.evaluate import Evaluator, Request

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=None)
def _checked(text: str):
    result = check(text, "p.fpol")
    errors = [f"{d.span.line}:{d.span.column} {d.code} {d.message}"
              for d in result.diagnostics if d.is_error]
    assert not errors, f"policy does not compile: {errors}\n{text}"
    return result


@functools.lru_cache(maxsize=None)
def _evaluator(text: str) -> Evaluator:
    return Evaluator(_checked(text).policy)


def _request(text: str) -> Request:
    return parse_request(text.split(), 1)


def verdict(policy: str, request: str):
    return _evaluator(policy).evaluate(_request(request))


Lines = Union[None, str, tuple]


class Row(NamedTuple):
    policy: str
    request: str
    expected: str  # exactly Decision.short()
    lines: Lines = None  # deciding rule lines, "default", "exdev", or None (unchecked)


def assert_row(row: Row) -> None:
    v = verdict(row.policy, row.request)
    got = v.decision.short()
    where = f"\npolicy:\n{row.policy}\nrequest: {row.request}"
    assert got == row.expected, f"got {got!r}, expected {row.expected!r}{where}"
    if row.lines is None:
        return
    policy = _checked(row.policy).policy
    lines = tuple(policy.rules[i].line for i in v.decision.rules)
    if row.lines == "exdev":
        assert v.exdev, f"expected a no-gain-by-moving refusal{where}"
    elif row.lines == "default":
        assert not v.exdev and lines == (), f"decided by lines {lines}, not the default{where}"
    else:
        assert not v.exdev, f"refused by no gain by moving{where}"
        assert lines == tuple(row.lines), f"decided by lines {lines}, expected {row.lines}{where}"


def _id(row: Row) -> str:
    policy = " / ".join(line for line in row.policy.splitlines() if line)
    return f"{policy} :: {row.request} -> {row.expected}"


# =====================================================================================
# 1. The op-group table
# =====================================================================================

# Every kind of request, by label: (request template with {P} = the object and
# {Q} = the other end, which end of a two-path op the label is about).
REQUESTS: dict[str, tuple[str, Optional[str]]] = {
    "lookup": ("lookup {P}", None),
    "getattr": ("getattr {P}", None),
    "setattr": ("setattr {P}", None),
    "access F_OK": ("access {P} mask=-", None),
    "access x": ("access {P} mask=x", None),
    "access w": ("access {P} mask=w", None),
    "access wx": ("access {P} mask=wx", None),
    "access r": ("access {P} mask=r", None),
    "access rx": ("access {P} mask=rx", None),
    "access rw": ("access {P} mask=rw", None),
    "access rwx": ("access {P} mask=rwx", None),
    "access append": ("access {P} mask=8", None),  # MAY_APPEND counts as write
    "open O_RDONLY": ("open {P} flags=O_RDONLY", None),
    "open O_WRONLY": ("open {P} flags=O_WRONLY", None),
    "open O_RDWR": ("open {P} flags=O_RDWR", None),
    "open O_RDONLY|O_TRUNC": ("open {P} flags=O_RDONLY|O_TRUNC", None),
    "open O_RDONLY|O_APPEND": ("open {P} flags=O_RDONLY|O_APPEND", None),
    "open O_WRONLY|O_TRUNC": ("open {P} flags=O_WRONLY|O_TRUNC", None),
    "open O_RDONLY|O_NOFOLLOW|O_CLOEXEC": ("open {P} flags=O_RDONLY|O_NOFOLLOW|O_CLOEXEC", None),
    "open exec": ("open {P} flags=O_RDONLY|FMODE_EXEC", None),
    "open O_WRONLY exec": ("open {P} flags=O_WRONLY|FMODE_EXEC", None),
    "open O_RDWR exec": ("open {P} flags=O_RDWR|FMODE_EXEC", None),
    "create O_WRONLY": ("create {P} flags=O_WRONLY|O_CREAT", None),
    "create O_RDWR": ("create {P} flags=O_RDWR|O_CREAT|O_EXCL", None),
    "create O_RDONLY": ("create {P} flags=O_RDONLY|O_CREAT", None),
    "opendir": ("opendir {P}", None),
    "mknod": ("mknod {P}", None),
    "mkdir": ("mkdir {P}", None),
    "unlink": ("unlink {P}", None),
    "rmdir": ("rmdir {P}", None),
    "rename source": ("rename {P} to {Q}", "src"),
    "rename destination": ("rename {Q} to {P}", "dst"),
    "link source": ("link {P} to {Q}", "src"),
    "link destination": ("link {Q} to {P}", "dst"),
    "symlink": ("symlink {P}", None),
    "readlink": ("readlink {P}", None),
    "read": ("read {P}", None),
    "write": ("write {P}", None),
    "fallocate": ("fallocate {P}", None),
    "copy_file_range source": ("copy_file_range {P} to {Q}", "src"),
    "copy_file_range destination": ("copy_file_range {Q} to {P}", "dst"),
    "lseek": ("lseek {P}", None),
    "flush": ("flush {P}", None),
    "fsync": ("fsync {P}", None),
    "fsyncdir": ("fsyncdir {P}", None),
    "release": ("release {P}", None),
    "releasedir": ("releasedir {P}", None),
    "readdir": ("readdir {P}", None),
    "statfs": ("statfs {P}", None),
    "getxattr": ("getxattr {P}", None),
    "listxattr": ("listxattr {P}", None),
    "setxattr": ("setxattr {P}", None),
    "removexattr": ("removexattr {P}", None),
}

_READ_OPENS = {"open O_RDONLY", "open O_RDWR", "open O_RDONLY|O_TRUNC", "open O_RDONLY|O_APPEND",
               "open O_RDONLY|O_NOFOLLOW|O_CLOEXEC", "open exec", "open O_RDWR exec"}
_WRITE_OPENS = {"open O_WRONLY", "open O_RDWR", "open O_RDONLY|O_TRUNC", "open O_RDONLY|O_APPEND",
                "open O_WRONLY|O_TRUNC", "open O_WRONLY exec", "open O_RDWR exec"}
_CREATES = {"create O_WRONLY", "create O_RDWR", "create O_RDONLY"}
_HANDLE = {"lseek", "flush", "fsync", "fsyncdir", "release", "releasedir"}

# LANGUAGE.md §3 / docs/language.md §5.3, by hand.
MEMBERS: dict[str, set[str]] = {
    "read": _READ_OPENS | {"create O_RDWR", "create O_RDONLY", "read", "copy_file_range source",
                           "access r", "access rx", "access rw", "access rwx"},
    "write": _WRITE_OPENS | _CREATES | {
        "write", "fallocate", "setattr", "setxattr", "removexattr", "copy_file_range destination",
        "mknod", "mkdir", "symlink", "link destination", "unlink", "rmdir", "rename source",
        "rename destination", "access w", "access wx", "access rw", "access rwx", "access append"},
    "create": _CREATES | {"mknod", "mkdir", "symlink", "link destination", "rename destination"},
    "delete": {"unlink", "rmdir", "rename source"},
    "list": {"opendir", "readdir"},
    "stat": {"getattr", "access F_OK", "access x", "statfs", "getxattr", "listxattr", "readlink"},
    "exec": {"open exec", "open O_WRONLY exec", "open O_RDWR exec",
             "access x", "access wx", "access rx", "access rwx"},
    "all": set(REQUESTS),
}
# Single op names select every request of that op (`read`, `write`, `create` are groups).
for _op in ops.SINGLE_OPS:
    if _op not in MEMBERS:
        MEMBERS[_op] = {label for label, (tpl, _) in REQUESTS.items() if tpl.split()[0] == _op}


def _membership_rows() -> list[Row]:
    rows = []
    for selector, members in MEMBERS.items():
        assert members, selector
        policy = f"deny {selector} under /t with EPERM\n"
        for label, (template, end) in REQUESTS.items():
            request = template.format(P="/t/o", Q="/u/o")
            if label in members:
                expected, lines = "deny EPERM", (1,)
            elif end == "src" and not template.startswith("copy_file_range"):
                # Both ends allowed, but the source loses the selector's deny: EXDEV.
                expected, lines = "deny EXDEV", "exdev"
            else:
                expected, lines = "allow", "default"
            rows.append(Row(policy, request, expected, lines))
    return rows


MEMBERSHIP_ROWS = _membership_rows()


@pytest.mark.parametrize("row", MEMBERSHIP_ROWS, ids=[f"{r.policy.split()[1]} :: {r.request}"
                                                      for r in MEMBERSHIP_ROWS])
def test_group_membership(row):
    assert_row(row)


def test_membership_table_covers_every_atom_and_op():
    """Every atom of ops.ATOMS is produced by some request of the table, and every
    group and op name has a row."""
    produced = set()
    for template, end in REQUESTS.values():
        req = _request(template.format(P="/t/o", Q="/u/o"))
        atoms = ops.request_atoms(req.op, req.flags, req.mask)
        produced.add(atoms.source if end != "dst" else atoms.destination)
    assert produced == set(ops.ATOMS)
    assert set(MEMBERS) == set(ops.GROUPS) | set(ops.SINGLE_OPS)
    assert len(ops.ATOMS) == 47


def _doc_section(title: str) -> str:
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    start = text.index(title)
    end = text.index("\n#", start + len(title))
    return text[start:end]


def test_docs_group_table_is_the_implemented_one():
    """docs/language.md §5.3 lists exactly ops.EXPANSION for every group."""
    section = _doc_section("### 5.3 Groups")
    documented = {}
    for m in re.finditer(r"^\| `(\w+)` \| (.*) \|$", section, re.M):
        documented[m.group(1)] = m.group(2)
    assert set(documented) == set(ops.GROUPS)
    for group, cell in documented.items():
        if group == "all":
            assert "47 atoms" in cell
            assert ops.EXPANSION["all"] == frozenset(ops.ATOMS)
            continue
        atoms = set(re.findall(r"`([^`]+)`", cell))
        assert atoms == set(ops.EXPANSION[group]), group


def test_docs_op_table_is_the_implemented_one():
    """docs/language.md §5.2: every op, its atoms and each atom's groups."""
    section = _doc_section("### 5.2 Single ops")
    seen = set()
    for m in re.finditer(r"^\| `(\w+)`[^|]* \| (.*) \|$", section, re.M):
        op, cell = m.group(1), m.group(2)
        seen.add(op)
        documented = {}
        for entry in cell.split("<br>"):
            atom, _, groups = entry.partition("→")
            atom = atom.strip().strip("`")
            groups = {g.strip() for g in groups.split(",") if g.strip() not in ("—", "")}
            documented[atom] = groups
        assert set(documented) == set(ops.ATOMS_OF_OP[op]), op
        for atom, groups in documented.items():
            own = set() if op in ops.GROUPS else {op}  # `read`, `write`, `create` are groups
            assert groups == set(ops.SELECTORS[atom]) - {"all"} - own, atom
    assert seen == set(ops.SINGLE_OPS)


# Handle ops: only `all` and their own names; the default never denies or redirects them.
HANDLE_ROWS = []
for _h in sorted(_HANDLE):
    HANDLE_ROWS += [
        Row("default deny\n", f"{_h} /a", "allow", "default"),
        Row("default deny with EPERM\nallow all under /b\n", f"{_h} /a", "allow", "default"),
        Row("default redirect to userspace\n", f"{_h} /a", "allow", "default"),
        Row("mode complain\ndefault deny\n", f"{_h} /a", "allow", "default"),
        Row("deny all under /a\n", f"{_h} /a/x", "deny EACCES", (1,)),
        Row(f"deny {_h} under /a with EPERM\n", f"{_h} /a/x", "deny EPERM", (1,)),
        Row(f"redirect {_h} to userspace\n", f"{_h} /a/x", "userspace instead", (1,)),
        Row("audit all\n", f"{_h} /a", "allow +audit", "default"),
    ]
# ...while every other op is subject to the default, lookup included.
for _label in ("lookup", "getattr", "open O_RDONLY", "readdir", "statfs", "write"):
    _tpl = REQUESTS[_label][0].format(P="/a", Q="/b")
    HANDLE_ROWS += [
        Row("default deny\n", _tpl, "deny EACCES", "default"),
        Row("default redirect to userspace\n", _tpl, "userspace instead", "default"),
    ]


@pytest.mark.parametrize("row", HANDLE_ROWS, ids=[_id(r) for r in HANDLE_ROWS])
def test_handle_ops_and_default(row):
    assert_row(row)


# =====================================================================================
# 2. Precedence and matching (LANGUAGE.md §2, docs/language.md §4, §6)
# =====================================================================================

STRICTNESS_ROWS = [
    # deny > userspace > allow, however specific the weaker rules are.
    Row("deny read under /a\nredirect read to userspace under /a/b\nallow read at /a/b/c\n",
        "read /a/b/c", "deny EACCES", (1,)),
    Row("default deny\nallow read at /a/b/c\nredirect read to userspace under /a\n",
        "read /a/b/c", "userspace instead", (3,)),
    Row("default deny\nallow read under /a\n", "read /a/b", "allow", (2,)),
    Row("default deny\nallow read under /a\n", "read /b", "deny EACCES", "default"),
    Row("default deny\nallow read under /a\n", "write /a/b", "deny EACCES", "default"),
    # An allow cannot punch a hole in a deny...
    Row("deny write under /data\nallow write under /data/tmp\n", "write /data/tmp/x",
        "deny EACCES", (1,)),
    # ...an except can.
    Row("deny write under /data except under /data/tmp\n", "write /data/tmp/x", "allow", "default"),
    # Several matching allows are all named.
    Row("default deny\nallow read under /a\nallow all under /a/b\n", "read /a/b/c", "allow", (2, 3)),
    # Rule order does not matter.
    Row("allow read at /a/b/c\nredirect read to userspace under /a/b\ndeny read under /a\n",
        "read /a/b/c", "deny EACCES", (3,)),
]

SPECIFICITY_ROWS = [
    # `at` beats `under` at the same depth (5 > 4).
    Row("deny write under /a/b with EPERM\ndeny write at /a/b with EROFS\n", "write /a/b",
        "deny EROFS", (2,)),
    Row("deny write under /a/b with EPERM\ndeny write at /a/b with EROFS\n", "write /a/b/c",
        "deny EPERM", (1,)),
    # The deeper `under` wins.
    Row("deny write under /a with EPERM\ndeny write under /a/b with EROFS\n", "write /a/b/c",
        "deny EROFS", (2,)),
    Row("deny write under /a with EPERM\ndeny write under /a/b with EROFS\n", "write /a/c",
        "deny EPERM", (1,)),
    # `under /` (0) loses to everything, `at /` (1) is the root only.
    Row("deny all under / with EPERM\ndeny all at / with EROFS\n", "getattr /", "deny EROFS", (2,)),
    Row("deny all under / with EPERM\ndeny all at / with EROFS\n", "getattr /x", "deny EPERM", (1,)),
    # A literal component (2) beats a glob component (1).
    Row('deny write matching "/a/*/c" with EPERM\ndeny write matching "/a/b/c" with EROFS\n',
        "write /a/b/c", "deny EROFS", (2,)),
    Row('deny write matching "/a/*/c" with EPERM\ndeny write matching "/a/b/c" with EROFS\n',
        "write /a/x/c", "deny EPERM", (1,)),
    # `*` (1) beats `**` (0), an exact pattern gets +1.
    Row('deny read matching "/a/**" with EPERM\ndeny read matching "/a/*" with EROFS\n',
        "read /a/x", "deny EROFS", (2,)),
    Row('deny read matching "/a/**" with EPERM\ndeny read matching "/a/*" with EROFS\n',
        "read /a/x/y", "deny EPERM", (1,)),
    # `named "*.key"` is 1: any `under /a` (2) beats it; `named "id_rsa"` is 2.
    Row('deny read named "*.key" with EPERM\ndeny read under /a with EROFS\n', "read /a/x.key",
        "deny EROFS", (2,)),
    Row('deny read named "*.key" with EPERM\ndeny read under /a with EROFS\n', "read /b/x.key",
        "deny EPERM", (1,)),
    Row('deny read named "id_rsa" with EPERM\ndeny read at / with EROFS\n', "read /id_rsa",
        "deny EPERM", (1,)),
    # Scopes add up: `under /a named "*.key"` is 3.
    Row('deny read under /a named "*.key" with EPERM\ndeny read under /a with EROFS\n',
        "read /a/b/x.key", "deny EPERM", (1,)),
    Row('deny read under /a named "*.key" with EPERM\ndeny read under /a/b with EROFS\n',
        "read /a/b/x.key", "deny EROFS", (2,)),
    # A brace scope counts as its least specific alternative: `/{etc,usr/lib}/**` is 2.
    Row('deny write matching "/{etc,usr/lib}/**" with EPERM\ndeny write under /usr/lib with EROFS\n',
        "write /usr/lib/x", "deny EROFS", (2,)),
    Row('deny write matching "/{etc,usr/lib}/**" with EPERM\ndeny write under /usr/lib with EROFS\n',
        "write /etc/x", "deny EPERM", (1,)),
    # `except` does not count towards specificity (both 2 here; the deeper under wins).
    Row("deny write under /a except at /a/q with EPERM\ndeny write under /a/b with EROFS\n",
        "write /a/b/c", "deny EROFS", (2,)),
    # Equal specificity, equal errno: no tie, both rules named.
    Row("deny write under /a with EPERM\ndeny all under /a with EPERM\n", "write /a/x",
        "deny EPERM", (1, 2)),
    # Equal specificity on disjoint trees is no tie.
    Row("deny write under /a with EPERM\ndeny write under /b with EROFS\n", "write /b/x",
        "deny EROFS", (2,)),
    # Specificity picks the userspace mode too.
    Row("redirect open to userspace under /media\n"
        "redirect open to userspace before under /media/photos\n",
        "open /media/photos/a.jpg flags=O_RDONLY", "userspace before", (2,)),
    Row("redirect open to userspace under /media\n"
        "redirect open to userspace before under /media/photos\n",
        "open /media/music/a.mp3 flags=O_RDONLY", "userspace instead", (1,)),
    Row("redirect open to userspace after under /a\nredirect all to userspace at /a/x\n",
        "open /a/x flags=O_RDONLY", "userspace instead", (2,)),
    Row("redirect open to userspace after under /a\nredirect all to userspace at /a/x\n",
        "open /a/y flags=O_RDONLY", "userspace after", (1,)),
    # The errno comes from the deny rules only: a more specific redirect does not matter.
    Row("deny read under /a with EPERM\nredirect read to userspace before at /a/b\n", "read /a/b",
        "deny EPERM", (1,)),
    # The errno is the rule's, EACCES by default; `with` spelt as an alias is one errno.
    Row("deny read under /a\n", "read /a/x", "deny EACCES", (1,)),
    Row("deny read under /a with ENOENT\n", "read /a/x", "deny ENOENT", (1,)),
]


def test_errno_ties_are_compile_errors():
    """Two denies with different errnos and equal top specificity (LANGUAGE.md §2)."""
    for text in ("deny write under /data with EPERM\ndeny write under /data with EROFS\n",
                 'deny read named "id_rsa" with EPERM\ndeny read under /a with EROFS\n',
                 "deny write under /boot with EROFS\ndeny exec under /boot\n",
                 'deny write matching "/{etc,usr/lib}/**" with EPERM\n'
                 "deny write under /usr with EROFS\n"):
        codes = [d.code for d in check(text, "p.fpol").diagnostics if d.is_error]
        assert codes == ["FP023"], (text, codes)
    text = ("redirect open to userspace before under /media\n"
            "redirect open to userspace after under /media\n")
    assert [d.code for d in check(text, "p.fpol").diagnostics if d.is_error] == ["FP024"]


AUDIT_ROWS = [
    Row("audit read under /a\n", "read /a/x", "allow +audit", "default"),
    Row("audit read under /a\n", "write /a/x", "allow", "default"),
    Row("audit read under /a\n", "read /b", "allow", "default"),
    Row("audit read under /a\ndeny read under /a/b with EPERM\n", "read /a/b", "deny EPERM +audit", (2,)),
    Row("audit all\nredirect read to userspace before under /a\n", "read /a/x",
        "userspace before +audit", (2,)),
    Row("default deny\naudit write\n", "write /x", "deny EACCES +audit", "default"),
    Row("default deny\naudit write\n", "read /x", "deny EACCES", "default"),
    # audit is never a deny: it does not create a tie or change the errno.
    Row("audit write under /a/b/c\ndeny write under /a with EROFS\n", "write /a/b/c",
        "deny EROFS +audit", (2,)),
    # audit on one end of a two-path op is enough.
    Row("audit delete under /a\n", "rename /a/x to /a/y", "allow +audit", "default"),
    Row("audit create under /b\n", "rename /a/x to /b/x", "allow +audit", "default"),
]

DEFAULT_ROWS = [
    Row("", "write /x", "allow", "default"),
    Row("default allow\n", "write /x", "allow", "default"),
    Row("default deny\n", "write /x", "deny EACCES", "default"),
    Row("default deny with EPERM\n", "read /x", "deny EPERM", "default"),
    Row("default deny with ENOENT\nallow lookup\n", "lookup /x", "allow", (2,)),
    Row("default redirect to userspace\n", "read /x", "userspace instead", "default"),
    Row("default redirect to userspace instead\n", "mkdir /x", "userspace instead", "default"),
    Row("default redirect to userspace\nallow read under /pub\n", "read /pub/x", "allow", (2,)),
    Row("default redirect to userspace\ndeny read under /pub\n", "read /pub/x", "deny EACCES", (2,)),
    # A rule that selects an atom decides it; the default only fills the rest.
    Row("default deny\nallow read under /a\n", "open /a/x flags=O_RDONLY", "allow", (2,)),
    Row("default deny\nallow read under /a\n", "open /a/x flags=O_WRONLY", "deny EACCES", "default"),
    Row("default deny\nallow write under /a\n", "open /a/x flags=O_RDWR", "allow", (2,)),
]

COMPLAIN_ROWS = [
    Row("mode complain\ndeny write under /a with EPERM\n", "write /a/x", "allow +audit", (2,)),
    Row("mode complain\ndeny write under /a with EPERM\n", "write /b", "allow", "default"),
    Row("mode complain\ndefault deny\n", "read /x", "allow +audit", "default"),
    Row("mode complain\ndefault deny\nallow read\n", "read /x", "allow", (3,)),
    Row("mode complain\nredirect read to userspace before under /a\n", "read /a/x",
        "userspace before", (2,)),
    Row("mode complain\ndefault redirect to userspace\n", "read /x", "userspace instead", "default"),
    Row("mode complain\naudit read\n", "read /x", "allow +audit", "default"),
    Row("mode complain\ndeny read under /a\nredirect read to userspace under /a\n", "read /a/x",
        "allow +audit", (2,)),
    Row("mode complain\ndeny write under /a\n", "rename /a/x to /b/x", "allow +audit", (2,)),
    # EXDEV becomes allow + audit as well (here the source's rights are a redirect).
    Row("mode complain\nredirect read to userspace under /a\n", "rename /a/x to /b/x",
        "allow +audit"),
]

COMPLAIN_EXDEV_ROWS = [
    # In enforce mode these are EXDEV (the source's rights come from a deny); complain mode
    # must allow them *and audit them*. The evaluator compares the already-complained
    # decisions (all allow) and finds no gain, so it allows silently.
    Row("mode complain\ndeny read under /a\n", "rename /a/x to /b/x", "allow +audit"),
    Row("mode complain\ndeny read under /a/b/keys\n", "rename /a/b to /c", "allow +audit"),
    Row("mode complain\ndeny write under /a\n", "link /a/x to /b/x", "allow +audit"),
]

EXCEPT_ROWS = [
    Row('deny write under /a except under /a/tmp, named "*.log"\n', "write /a/x", "deny EACCES", (1,)),
    Row('deny write under /a except under /a/tmp, named "*.log"\n', "write /a/tmp", "allow", "default"),
    Row('deny write under /a except under /a/tmp, named "*.log"\n', "write /a/tmp/q/r", "allow", "default"),
    Row('deny write under /a except under /a/tmp, named "*.log"\n', "write /a/b/x.log", "allow", "default"),
    Row('deny write under /a except under /a/tmp, named "*.log"\n', "write /a/tmpx", "deny EACCES", (1,)),
    # Several except clauses are one list.
    Row('deny write under /a except under /a/tmp except named "*.log"\n', "write /a/x.log",
        "allow", "default"),
    Row('deny write under /a except under /a/tmp except named "*.log"\n', "write /a/tmp/x",
        "allow", "default"),
    # `except at` removes the node only.
    Row("deny write under /a except at /a/b\n", "write /a/b", "allow", "default"),
    Row("deny write under /a except at /a/b\n", "write /a/b/c", "deny EACCES", (1,)),
    # `except matching` with `**`.
    Row('deny read under /a except matching "/a/*/pub/**"\n', "read /a/x/pub", "allow", "default"),
    Row('deny read under /a except matching "/a/*/pub/**"\n', "read /a/x/pub/y/z", "allow", "default"),
    Row('deny read under /a except matching "/a/*/pub/**"\n', "read /a/pub", "deny EACCES", (1,)),
]

CASE_ROWS = [
    Row("names case-insensitive\ndeny read under /Data\n", "read /data/x", "deny EACCES", (2,)),
    Row("names case-insensitive\ndeny read under /Data\n", "read /DATA/X", "deny EACCES", (2,)),
    Row("names case-insensitive\ndeny read at /Data/Key\n", "read /dAtA/kEY", "deny EACCES", (2,)),
    Row('names case-insensitive\ndeny read named "*.LOG"\n', "read /a/x.log", "deny EACCES", (2,)),
    Row('names case-insensitive\ndeny read matching "/A/?/b*"\n', "read /a/Q/BX", "deny EACCES", (2,)),
    Row('names case-insensitive\ndeny read named "{Ab,cd}"\n', "read /CD", "deny EACCES", (2,)),
    Row("names case-insensitive\ndeny read under /Data\n", "read /dat", "allow", "default"),
    # Only ASCII folds: Ä (c3 84) and ä (c3 a4) stay different.
    Row('names case-insensitive\ndeny read under "/\\xc3\\x84"\n', "read /\u00e4", "allow", "default"),
    Row('names case-insensitive\ndeny read under "/\\xc3\\x84"\n', "read /\u00c4", "deny EACCES", (2,)),
    # Without the header, names are bytes.
    Row("deny read under /Data\n", "read /data/x", "allow", "default"),
    Row('deny read named "*.LOG"\n', "read /a/x.log", "allow", "default"),
    Row("deny read under /Data\n", "read /Data/x", "deny EACCES", (1,)),
]

GLOB_ROWS = [
    # under / at are component-wise.
    Row("deny read under /secret\n", "read /secret", "deny EACCES", (1,)),
    Row("deny read under /secret\n", "read /secret/a/b/c/d/e", "deny EACCES", (1,)),
    Row("deny read under /secret\n", "read /secrets", "allow", "default"),
    Row("deny read under /secret\n", "read /sec", "allow", "default"),
    Row("deny read under /\n", "read /", "deny EACCES", (1,)),
    Row("deny read at /secret\n", "read /secret/a", "allow", "default"),
    Row("deny getattr at /\n", "getattr /", "deny EACCES", (1,)),
    Row("deny getattr at /\n", "getattr /a", "allow", "default"),
    # `**` matches the directory itself and any depth; `/*/**` is strictly beneath.
    Row('deny read matching "/tmp/**"\n', "read /tmp", "deny EACCES", (1,)),
    Row('deny read matching "/tmp/**"\n', "read /tmp/a/b/c", "deny EACCES", (1,)),
    Row('deny read matching "/tmp/**"\n', "read /tmpx", "allow", "default"),
    Row('deny read matching "/tmp/*/**"\n', "read /tmp", "allow", "default"),
    Row('deny read matching "/tmp/*/**"\n', "read /tmp/a", "deny EACCES", (1,)),
    Row('deny read matching "/**/.git/**"\n', "read /.git", "deny EACCES", (1,)),
    Row('deny read matching "/**/.git/**"\n', "read /a/b/.git/HEAD", "deny EACCES", (1,)),
    Row('deny read matching "/**/.git/**"\n', "read /a/b/git/HEAD", "allow", "default"),
    Row('deny read matching "/**/**/x"\n', "read /x", "deny EACCES", (1,)),
    Row('deny read matching "/**"\n', "read /", "deny EACCES", (1,)),
    # `*` within one component, the empty run included, a leading dot included.
    Row('deny read matching "/home/*/.ssh"\n', "read /home/alice/.ssh", "deny EACCES", (1,)),
    Row('deny read matching "/home/*/.ssh"\n', "read /home/.ssh", "allow", "default"),
    Row('deny read matching "/home/*/.ssh"\n', "read /home/a/b/.ssh", "allow", "default"),
    Row('deny read matching "/home/*"\n', "read /home/.snapshots", "deny EACCES", (1,)),
    Row('deny read named "a*"\n', "read /a", "deny EACCES", (1,)),
    Row('deny read named "*a*b*"\n', "read /x/aab", "deny EACCES", (1,)),
    Row('deny read named "*a*b*"\n', "read /x/ba", "allow", "default"),
    # `?` is exactly one byte: a two-byte UTF-8 character needs `??`.
    Row('deny read matching "/a/?"\n', "read /a/x", "deny EACCES", (1,)),
    Row('deny read matching "/a/?"\n', "read /a/xy", "allow", "default"),
    Row('deny read matching "/a/?"\n', "read /a", "allow", "default"),
    Row('deny read matching "/a/?"\n', "read /a/\u00e9", "allow", "default"),
    Row('deny read matching "/a/??"\n', "read /a/\u00e9", "deny EACCES", (1,)),
    # `named` is the final component anywhere, never the root.
    Row('deny read named "*"\n', "read /", "allow", "default"),
    Row('deny read named "*"\n', "read /a", "deny EACCES", (1,)),
    Row('deny read named "*.key"\n', "read /a/b/c/x.key", "deny EACCES", (1,)),
    Row('deny read named "*.key"\n', "read /a/x.key/y", "allow", "default"),
    Row('deny create under /uploads named "*.exe"\n', "mkdir /uploads/a/b.exe", "deny EACCES", (1,)),
    Row('deny create under /uploads named "*.exe"\n', "mkdir /other/b.exe", "allow", "default"),
    # Braces: alternatives, empty alternatives, `/` inside a matching alternative, nesting.
    Row('deny read matching "/{usr,boot}/**"\n', "read /boot/vmlinuz", "deny EACCES", (1,)),
    Row('deny read matching "/{usr,boot}/**"\n', "read /etc/x", "allow", "default"),
    Row('deny read matching "/a{,/b}"\n', "read /a", "deny EACCES", (1,)),
    Row('deny read matching "/a{,/b}"\n', "read /a/b", "deny EACCES", (1,)),
    Row('deny read matching "/a{,/b}"\n', "read /a/c", "allow", "default"),
    Row('deny read matching "/{usr,usr/local}/bin/*"\n', "read /usr/local/bin/x", "deny EACCES", (1,)),
    Row('deny read matching "/{a,b{1,2}}"\n', "read /b2", "deny EACCES", (1,)),
    Row('deny read matching "/{a,b{1,2}}"\n', "read /b", "allow", "default"),
    Row('deny read named "{*.exe,*.sh}"\n', "read /x/run.sh", "deny EACCES", (1,)),
    Row('deny read named "{*.exe,*.sh}"\n', "read /x/run.shx", "allow", "default"),
    # under/at take plain paths: glob characters are ordinary there.
    Row('deny read under "/a*"\n', "read /a*/x", "deny EACCES", (1,)),
    Row('deny read under "/a*"\n', "read /ab/x", "allow", "default"),
    # All scopes must hold.
    Row("deny read under /a under /b\n", "read /a/x", "allow", "default"),
    Row('deny read under /a matching "/*/b/**"\n', "read /a/b/c", "deny EACCES", (1,)),
    Row('deny read under /a matching "/*/b/**"\n', "read /x/b/c", "allow", "default"),
    # The object of a namespace op is the named child.
    Row("deny write at /d\n", "mkdir /d/x", "allow", "default"),
    Row("deny write at /d\n", "setattr /d", "deny EACCES", (1,)),
    Row("deny create at /d/x\n", "mkdir /d/x", "deny EACCES", (1,)),
    Row("deny lookup at /d/x\n", "lookup /d/x", "deny EACCES", (1,)),
]

MOVE_ROWS = [
    # Both ends of a rename are judged as write.
    Row("deny write under /a with EPERM\n", "rename /a/x to /b/x", "deny EPERM", (1,)),
    Row("deny write under /a with EPERM\n", "rename /b/x to /a/x", "deny EPERM", (1,)),
    Row("deny delete under /a with EPERM\n", "rename /b/x to /a/x", "allow", "default"),
    Row("deny create under /a with EPERM\n", "rename /b/x to /a/x", "deny EPERM", (1,)),
    # The stricter end decides; deny beats a redirect at the other end.
    Row("redirect delete to userspace under /a\ndeny create under /b with EPERM\n",
        "rename /a/x to /b/x", "deny EPERM", (2,)),
    Row("redirect rename to userspace under /a\n", "rename /a/x to /b/x", "userspace instead", (1,)),
    Row("redirect rename to userspace under /b\n", "rename /a/x to /b/x", "userspace instead", (1,)),
    # No gain by moving: EXDEV only when both ends are otherwise allowed.
    Row("deny read under /a\n", "rename /a/x to /b/x", "deny EXDEV", "exdev"),
    Row("deny read under /a\n", "rename /b/x to /a/x", "allow", "default"),
    Row("deny read under /a\ndeny write under /c with EPERM\n", "rename /a/x to /c/x",
        "deny EPERM", (2,)),
    Row("deny read under /a\ndeny delete at /a/x with EPERM\n", "rename /a/x to /b/x",
        "deny EPERM", (2,)),
    Row("redirect read to userspace before under /a\n", "rename /a/x to /b/x", "deny EXDEV", "exdev"),
    Row("deny read under /a\nredirect read to userspace under /b\n", "rename /a/x to /b/x",
        "deny EXDEV", "exdev"),
    Row("redirect read to userspace under /a\ndeny read under /b\n", "rename /a/x to /b/x",
        "allow", "default"),
    # "Looser" compares kinds only: another errno or a lost audit flag is no gain.
    Row("deny read under /a with EPERM\ndeny read under /b with EROFS\n", "rename /a/x to /b/x",
        "allow", "default"),
    Row("audit read under /a\n", "rename /a/x to /b/x", "allow", "default"),
    # Same rights at both ends: allowed.
    Row("deny read under /a\ndeny read under /b\n", "rename /a/x to /b/y", "allow", "default"),
    Row("deny read under /a\n", "rename /a/x to /a/y", "allow", "default"),
    # A directory rename counts every node beneath it.
    Row("deny read under /a/b/keys\n", "rename /a/b to /c", "deny EXDEV", "exdev"),
    Row("deny read under /a/b/keys\n", "rename /a/x to /c", "allow", "default"),
    Row("deny read under /a/b/keys\n", "rename /a/b/keys/k to /a/b/keys/j", "allow", "default"),
    Row('deny read named "*.key"\n', "rename /a/dir to /b/dir", "allow", "default"),
    Row('deny read under /a named "*.key"\n', "rename /a/dir to /b/dir", "deny EXDEV", "exdev"),
    Row('deny read matching "/a/*/.git/**"\n', "rename /a/repo to /b/repo", "deny EXDEV", "exdev"),
    Row('deny read matching "/a/*/.git/**"\n', "rename /a/repo to /a/repo2", "allow", "default"),
    # link: the existing file's end is in no group; the new name is write + create.
    Row("deny write under /a with EPERM\n", "link /a/x to /b/x", "deny EXDEV", "exdev"),
    Row("deny write under /a with EPERM\n", "link /b/x to /a/x", "deny EPERM", (1,)),
    Row("deny create under /b with EPERM\n", "link /a/x to /b/x", "deny EPERM", (1,)),
    Row("deny delete under /a with EPERM\n", "link /a/x to /b/x", "deny EXDEV", "exdev"),
    Row("deny link under /a with EPERM\n", "link /a/x to /b/x", "deny EPERM", (1,)),
    Row("deny read under /a\n", "link /b/x to /a/x", "allow", "default"),
    # A link never moves a directory: only the node itself counts.
    Row("deny read under /a/b/keys\n", "link /a/b to /c", "allow", "default"),
    # copy_file_range: source read, destination write, no EXDEV.
    Row("deny read under /a\n", "copy_file_range /a/x to /b/x", "deny EACCES", (1,)),
    Row("deny write under /a\n", "copy_file_range /a/x to /b/x", "allow", "default"),
    Row("deny write under /a\n", "copy_file_range /b/x to /a/x", "deny EACCES", (1,)),
    Row("deny read under /a with EPERM\n", "copy_file_range /b/x to /a/x", "allow", "default"),
    # Under default deny, both ends need their rights.
    Row("default deny\nallow delete under /a\n", "rename /a/x to /b/x", "deny EACCES", "default"),
    # ...and the destination may not grant what the source lacked (create, here).
    Row("default deny\nallow delete under /a\nallow create under /b\n", "rename /a/x to /b/x",
        "deny EXDEV", "exdev"),
    Row("default deny\nallow delete, create under /a\nallow delete, create under /b\n",
        "rename /a/x to /b/x", "allow", (2,)),
]

# LANGUAGE.md §6: who is asking. A request is made by uid 0, gid 0 unless it says
# `uid=N gid=N` (as a case table line does).
SUBJECT_ROWS = [
    # A `by` list restricts the rule to the requesters it names; without one, everyone.
    Row("deny write under /a by uid 5\n", "write /a/x uid=5", "deny EACCES", (1,)),
    Row("deny write under /a by uid 5\n", "write /a/x uid=6", "allow", "default"),
    Row("deny write under /a by uid 5\n", "write /a/x", "allow", "default"),
    Row("deny write under /a by uid 10-19\n", "write /a/x uid=10", "deny EACCES", (1,)),
    Row("deny write under /a by uid 10-19\n", "write /a/x uid=19", "deny EACCES", (1,)),
    Row("deny write under /a by uid 10-19\n", "write /a/x uid=20", "allow", "default"),
    Row("deny write under /a by uid 10-19\n", "write /a/x uid=9", "allow", "default"),
    Row("deny write under /a by gid 50\n", "write /a/x uid=5 gid=50", "deny EACCES", (1,)),
    Row("deny write under /a by gid 50\n", "write /a/x uid=50 gid=5", "allow", "default"),
    # The list's items are alternatives: any one of them is enough.
    Row("deny write under /a by uid 5, gid 50\n", "write /a/x uid=5 gid=1", "deny EACCES", (1,)),
    Row("deny write under /a by uid 5, gid 50\n", "write /a/x uid=1 gid=50", "deny EACCES", (1,)),
    Row("deny write under /a by uid 5, gid 50\n", "write /a/x uid=1 gid=1", "allow", "default"),
    Row("deny write under /a by uid 5, uid 7\n", "write /a/x uid=7", "deny EACCES", (1,)),
    Row("deny write under /a by user root\n", "write /a/x", "deny EACCES", (1,)),
    Row("deny write under /a by group root\n", "write /a/x uid=5", "deny EACCES", (1,)),
    Row("deny write under /a by group root\n", "write /a/x gid=5", "allow", "default"),
    # `except by` removes requesters; with scopes in the same list, both are removed.
    Row("deny write under /srv except by uid 0\n", "write /srv/x", "allow", "default"),
    Row("deny write under /srv except by uid 0\n", "write /srv/x uid=1000", "deny EACCES", (1,)),
    Row("deny write under /srv except under /srv/tmp, by gid 10\n", "write /srv/tmp/x uid=5",
        "allow", "default"),
    Row("deny write under /srv except under /srv/tmp, by gid 10\n", "write /srv/x uid=5 gid=10",
        "allow", "default"),
    Row("deny write under /srv except under /srv/tmp, by gid 10\n", "write /srv/x uid=5",
        "deny EACCES", (1,)),
    Row("deny write under /a by uid 0-99 except by uid 5\n", "write /a/x uid=5", "allow", "default"),
    Row("deny write under /a by uid 0-99 except by uid 5\n", "write /a/x uid=6", "deny EACCES", (1,)),
    Row("deny write under /a by uid 0-99 except by gid 7\n", "write /a/x uid=6 gid=7", "allow",
        "default"),
    # Precedence is unchanged: among the rules that hold for this requester, the strictest.
    Row("deny read under /a\nallow read under /a by uid 5\n", "read /a/x uid=5", "deny EACCES", (1,)),
    Row("default deny\nallow read under /a by uid 5\n", "read /a/x uid=5", "allow", (2,)),
    Row("default deny\nallow read under /a by uid 5\n", "read /a/x uid=6", "deny EACCES", "default"),
    Row("redirect read to userspace under /a by gid 3\ndeny read under /a by uid 5\n",
        "read /a/x uid=5 gid=3", "deny EACCES", (2,)),
    Row("redirect read to userspace under /a by gid 3\ndeny read under /a by uid 5\n",
        "read /a/x uid=6 gid=3", "userspace instead", (1,)),
    Row("audit read under /a by uid 5\n", "read /a/x uid=5", "allow +audit", "default"),
    Row("audit read under /a by uid 5\n", "read /a/x uid=6", "allow", "default"),
    # Specificity still comes first in errno ties...
    Row("deny write under /a by uid 5 with EPERM\ndeny write under /a/b with EROFS\n",
        "write /a/b/x uid=5", "deny EROFS", (2,)),
    # ...then a rule with a `by` list is more specific than one without.
    Row("deny write under /a by uid 5 with EPERM\ndeny write under /a with EROFS\n",
        "write /a/x uid=5", "deny EPERM", (1,)),
    Row("deny write under /a with EROFS\ndeny write under /a by uid 5 with EPERM\n",
        "write /a/x uid=5", "deny EPERM", (2,)),
    Row("deny write under /a by uid 5 with EPERM\ndeny write under /a with EROFS\n",
        "write /a/x uid=6", "deny EROFS", (2,)),
    Row("deny write under /a by uid 5 with EPERM\ndeny write under /a by uid 6 with EROFS\n",
        "write /a/x uid=6", "deny EROFS", (2,)),
    Row("redirect open to userspace after under /m by uid 5\n"
        "redirect open to userspace before under /m\n", "open /m/x uid=5", "userspace after", (1,)),
    # The default applies to a request no rule matches, for that requester.
    Row("default deny with EPERM\nallow all under /home by uid 1000\n", "read /home/x uid=1000",
        "allow", (2,)),
    Row("default deny with EPERM\nallow all under /home by uid 1000\n", "read /home/x uid=1001",
        "deny EPERM", "default"),
    Row("default redirect to userspace\nallow all under /home by gid 100\n", "read /home/x gid=100",
        "allow", (2,)),
    Row("default redirect to userspace\nallow all under /home by gid 100\n", "read /home/x",
        "userspace instead", "default"),
    # No gain by moving compares both ends for the same requester.
    Row("deny read under /a by uid 5\n", "rename /a/x to /b/x uid=5", "deny EXDEV", "exdev"),
    Row("deny read under /a by uid 5\n", "rename /a/x to /b/x uid=6", "allow", "default"),
    Row("deny read under /a by uid 5\ndeny read under /b by uid 5\n", "rename /a/x to /b/x uid=5",
        "allow", "default"),
    Row("deny read under /a by uid 5\ndeny read under /b by uid 6\n", "rename /a/x to /b/x uid=5",
        "deny EXDEV", "exdev"),
    Row("deny read under /a by uid 5\ndeny read under /b by uid 6\n", "rename /b/x to /a/x uid=5",
        "allow", "default"),
    Row("deny read under /a/b/keys by gid 7\n", "rename /a/b to /c gid=7", "deny EXDEV", "exdev"),
    Row("deny read under /a/b/keys by gid 7\n", "rename /a/b to /c gid=8", "allow", "default"),
    Row("deny read under /a except by uid 0\n", "link /a/x to /b/x", "allow", "default"),
    Row("deny write under /a except by uid 0\n", "link /a/x to /b/x uid=3", "deny EXDEV", "exdev"),
    Row("deny write under /b by uid 3 with EPERM\n", "rename /a/x to /b/x uid=3", "deny EPERM", (1,)),
    Row("deny write under /b by uid 3 with EPERM\n", "rename /a/x to /b/x uid=4", "allow", "default"),
]


@pytest.mark.parametrize("row", SUBJECT_ROWS, ids=[_id(r) for r in SUBJECT_ROWS])
def test_subjects(row):
    assert_row(row)


def test_subject_errno_ties_are_compile_errors():
    """Ties are checked for every subject class: two `by` lists that both hold for some
    requester tie; lists that never meet, or a `by` list against none, do not."""
    tie = "deny write under /a by uid 5 with EPERM\ndeny write under /a by gid 7 with EROFS\n"
    assert [d.code for d in check(tie, "p.fpol").diagnostics if d.is_error] == ["FP023"]
    for text in ("deny write under /a by uid 5 with EPERM\ndeny write under /a by uid 6 with EROFS\n",
                 "deny write under /a by uid 5 with EPERM\ndeny write under /a with EROFS\n",
                 "deny write under /a by uid 5 with EPERM\n"
                 "deny write under /a except by uid 0-9 with EROFS\n"):
        assert not [d for d in check(text, "p.fpol").diagnostics if d.is_error], text
    both = ("deny write under /a except by uid 5 with EPERM\n"
            "deny write under /a except by uid 6 with EROFS\n")
    assert [d.code for d in check(both, "p.fpol").diagnostics if d.is_error] == ["FP023"]
    modes = ("redirect open to userspace before under /m by uid 1-9\n"
             "redirect open to userspace after under /m by uid 5\n")
    assert [d.code for d in check(modes, "p.fpol").diagnostics if d.is_error] == ["FP024"]


PRECEDENCE_ROWS = (STRICTNESS_ROWS + SPECIFICITY_ROWS + AUDIT_ROWS + DEFAULT_ROWS + COMPLAIN_ROWS
                   + EXCEPT_ROWS + CASE_ROWS + GLOB_ROWS + MOVE_ROWS)


@pytest.mark.parametrize("row", PRECEDENCE_ROWS, ids=[_id(r) for r in PRECEDENCE_ROWS])
def test_precedence(row):
    assert_row(row)


@pytest.mark.parametrize("row", COMPLAIN_EXDEV_ROWS, ids=[_id(r) for r in COMPLAIN_EXDEV_ROWS])
def test_complain_mode_audits_exdev(row):
    assert_row(row)


def test_complain_exdev_rows_are_exdev_when_enforced():
    """The rows above are real EXDEV refusals in enforce mode."""
    for row in COMPLAIN_EXDEV_ROWS:
        enforced = row.policy.replace("mode complain\n", "")
        assert verdict(enforced, row.request).decision.short() == "deny EXDEV", row


def test_complain_two_path_names_what_would_deny():
    """A complained two-path request should say what would deny it. In enforce mode
    `rename /build/a to /home/a` is denied by the default at the destination."""
    policy = "mode complain\ndefault deny with EPERM\nallow all under /build\n"
    v = verdict(policy, "rename /build/a to /home/a")
    assert v.decision.short() == "allow +audit"
    enforced = verdict(policy.replace("mode complain\n", ""), "rename /build/a to /home/a")
    assert enforced.decision.short() == "deny EPERM" and enforced.decision.rules == ()


def test_complain_two_path_is_marked_complained():
    policy = "mode complain\ndefault deny with EPERM\nallow all under /build\n"
    v = verdict(policy, "rename /build/a to /home/a")
    assert v.decision.complained and v.decision.rules == ()


def test_row_count():
    """The tables stay exhaustive: every selector x request, and the precedence rows."""
    assert len(MEMBERSHIP_ROWS) == len(MEMBERS) * len(REQUESTS)
    assert len(PRECEDENCE_ROWS) >= 150


def test_a_complained_deny_is_stricter_than_userspace():
    """decide.stricter, which the daemon combines a two-path op's ends with (copy_file_range,
    a rename's whiteout, RENAME_EXCHANGE's two directions): a complained deny is the deny it
    stands for, so `to userspace` at the other end does not win (docs/fuzzing.md)."""
    from fpol.compiler.decide import Decision, combine, stricter

    complained = Decision("allow", audit=True, rules=(1,), complained=True,
                          complained_errno="EACCES")
    userspace = Decision("userspace", mode="instead", rules=(0,))
    assert stricter(complained, userspace) is complained
    assert stricter(userspace, complained) is complained
    assert combine(userspace, complained).complained
    denied = Decision("deny", errno="EPERM", rules=(2,))
    assert stricter(complained, denied) is complained  # a tie: the first
    assert stricter(denied, complained) is denied


def test_quick_decisions_are_dataclass_decisions():
    """decide._decision makes Decisions without the dataclass's __init__ (it is on the hot
    path): it must set every field, and nothing else, as Decision(...) does."""
    import dataclasses
    import inspect

    from fpol.compiler.decide import Decision, _decision

    fields = [f.name for f in dataclasses.fields(Decision)]
    assert list(inspect.signature(_decision).parameters) == fields
    values = dict(kind="deny", errno="EPERM", mode=None, audit=True, rules=(3, 1),
                  audit_rules=(2,), complained=False, tie=(4,), complained_errno=None)
    made, built = _decision(**values), Decision(**values)
    assert made == built and hash(made) == hash(built) and vars(made) == vars(built)
