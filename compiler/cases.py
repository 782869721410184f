"""Case tables (`NAME.cases`): expected decisions, one readable line each.

    # comment
    write /secret/a                       -> deny EACCES
    open /secret/a flags=O_WRONLY|O_TRUNC -> deny EPERM line 7
    access /srv mask=rx                   -> allow
    rename /data/a to /tmp/a              -> deny EXDEV
    lookup "/Android/data"                -> userspace instead +audit
    read /etc/passwd                      -> allow default
    write /srv/db/x uid=34 gid=34         -> allow line 9

Left of `->`: an op, a path (bare, or quoted like policy paths), `to PATH` for
rename/link/copy_file_range, `flags=` for open/create, `mask=` for access, and
`uid=N gid=N` for who is asking (LANGUAGE.md §6; both 0 when not given).
Right: `allow`, `deny [ERRNO]`, `userspace [instead|before|after]`, then
optionally `+audit` / `-audit`, and `line N` (the deciding rule) or `default`;
`line FILE:N` names a rule in an included file (FILE as the include wrote it, or
its last components, e.g. `line common/credentials.fpol:7`).
Anything left unsaid is not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from . import ops
from .diagnostics import Reporter, Span
from .evaluate import Request, Verdict, parse_path
from .paths import PathProblem
from .errors import UsageProblem


class CaseSyntaxError(UsageProblem, ValueError):
    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Expectation:
    kind: str
    errno: Optional[str] = None
    mode: Optional[str] = None
    audit: Optional[bool] = None
    rule_line: Optional[int] = None  # 0 means "the default"
    rule_file: Optional[str] = None  # `line FILE:N`: a rule in an included file

    def text(self) -> str:
        out = self.kind
        if self.errno:
            out += f" {self.errno}"
        if self.mode:
            out += f" {self.mode}"
        if self.audit is not None:
            out += " +audit" if self.audit else " -audit"
        if self.rule_line == 0:
            out += " default"
        elif self.rule_line is not None:
            out += f" line {self.rule_file + ':' if self.rule_file else ''}{self.rule_line}"
        return out


@dataclass(frozen=True)
class Case:
    line: int
    text: str
    request: Request
    expect: Expectation


_TOKEN = re.compile(r'\s*("(?:\\.|[^"\\])*"|\S+)')


def _tokens(text: str) -> list[str]:
    return [m.group(1) for m in _TOKEN.finditer(text) if m.group(1)]


def _path(token: str, line: int):
    if token.startswith('"'):
        from .parser import decode_string

        reporter = Reporter("<case>")
        value = decode_string(token, Span.point(line, 1), reporter)
        if reporter.items:
            raise CaseSyntaxError(line, reporter.items[0].message)
    else:
        value = token.encode("utf-8", "surrogateescape")
    try:
        return parse_path(value)
    except PathProblem as p:
        raise CaseSyntaxError(line, f"{p.message} in `{token}`") from None


def parse_request(words: list[str], line: int) -> Request:
    if not words:
        raise CaseSyntaxError(line, "missing op and path")
    op = words[0]
    if op not in ops.SINGLE_OPS:
        from .diagnostics import did_you_mean

        hint = did_you_mean(op, ops.SINGLE_OPS) or "cases name single ops, not groups"
        raise CaseSyntaxError(line, f"unknown op `{op}`; {hint}")
    if len(words) < 2:
        raise CaseSyntaxError(line, f"`{op}` needs a path")
    path = _path(words[1], line)
    # create without flags is creat(2): O_WRONLY, as in `fpol explain`.
    to, flags, mask = None, (ops.O_WRONLY if op == "create" else 0), 0
    ids = {"uid": 0, "gid": 0}
    rest = words[2:]
    i = 0
    while i < len(rest):
        w = rest[i]
        if w == "to" and i + 1 < len(rest):
            to = _path(rest[i + 1], line)
            i += 2
            continue
        try:
            if w.startswith("flags="):
                flags = ops.parse_flags(w[6:])
            elif w.startswith("mask="):
                mask = ops.parse_mask(w[5:])
            elif w.startswith(("uid=", "gid=")):
                ids[w[:3]] = parse_subject_id(w[:3], w[4:], line)
            else:
                raise CaseSyntaxError(line, f"unexpected `{w}`")
        except ops.DetailError as e:
            raise CaseSyntaxError(line, str(e)) from None
        i += 1
    if op in ops.TWO_PATH_OPS and to is None:
        raise CaseSyntaxError(line, f"`{op}` needs `to PATH`")
    if op not in ops.TWO_PATH_OPS and to is not None:
        raise CaseSyntaxError(line, f"`{op}` takes no `to PATH`")
    return Request(op, path, to, flags, mask, uid=ids["uid"], gid=ids["gid"])


ID_MAX = 4294967294  # the largest id a requester (and a rule, LANGUAGE.md §6) may have


def subject_id(kind: str, text: str) -> int:
    """A requester's uid or gid as written (`uid=1000`, `--uid 1000`): a decimal number
    from 0 to 4294967294. Raises ValueError saying what is wrong."""
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"`{kind}` takes a decimal number, not `{text}`")
    value = int(text)
    if value > ID_MAX:
        raise ValueError(f"{kind} {value} is out of range: ids go up to {ID_MAX}")
    return value


def parse_subject_id(kind: str, text: str, line: int) -> int:
    try:
        return subject_id(kind, text)
    except ValueError as e:
        raise CaseSyntaxError(line, str(e)) from None


def parse_expectation(words: list[str], line: int) -> Expectation:
    if not words or words[0] not in ("allow", "deny", "userspace"):
        raise CaseSyntaxError(line, "expected `allow`, `deny` or `userspace` after `->`")
    kind, errno, mode, audit, rule_line, rule_file = words[0], None, None, None, None, None
    i = 1
    while i < len(words):
        w = words[i]
        if kind == "deny" and re.fullmatch(r"E[A-Z0-9]+", w) and errno is None:
            errno = w
        elif kind == "userspace" and w in ("instead", "before", "after") and mode is None:
            mode = w
        elif w in ("+audit", "-audit"):
            audit = w == "+audit"
        elif w == "default":
            rule_line = 0
        elif w == "line" and i + 1 < len(words) and words[i + 1].isdigit():
            rule_line = int(words[i + 1])
            i += 1
        elif w == "line" and i + 1 < len(words) and re.fullmatch(r".+:\d+", words[i + 1]):
            rule_file, number = words[i + 1].rsplit(":", 1)
            rule_line = int(number)
            i += 1
        else:
            raise CaseSyntaxError(line, f"unexpected `{w}` in the expected decision")
        i += 1
    return Expectation(kind, errno, mode, audit, rule_line, rule_file)


def parse_cases(text: str) -> list[Case]:
    cases = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if "->" not in line:
            raise CaseSyntaxError(number, "expected `REQUEST -> DECISION`")
        left, right = line.split("->", 1)
        cases.append(Case(number, line, parse_request(_tokens(left), number),
                          parse_expectation(_tokens(right), number)))
    return cases


def _same_errno(a: Optional[str], b: str) -> bool:
    """ENOTSUP and EOPNOTSUPP are one errno."""
    import errno as errno_module

    return a is not None and getattr(errno_module, a, a) == getattr(errno_module, b, b)


def mismatch(policy, expect: Expectation, v: Verdict) -> Optional[str]:
    """None if the verdict meets the expectation, else what differs."""
    d = v.decision
    problems = []
    if d.kind != expect.kind:
        problems.append(f"decision {d.kind}")
    if expect.errno and not _same_errno(d.errno, expect.errno):
        problems.append(f"errno {d.errno}")
    if expect.mode and d.mode != expect.mode:
        problems.append(f"userspace {d.mode}")
    if expect.audit is not None and d.audit != expect.audit:
        problems.append("audit " + ("on" if d.audit else "off"))
    if expect.rule_line is not None:
        deciders = [policy.rules[i] for i in d.rules] if not v.exdev else []
        lines = [_rule_place(policy, r) for r in deciders]
        if expect.rule_line == 0 and (lines or v.exdev):
            problems.append(f"decided by line {', '.join(lines)}" if lines else "no gain by moving")
        elif expect.rule_line and not any(_is_rule(policy, r, expect) for r in deciders):
            problems.append(f"decided by {'line ' + ', '.join(lines) if lines else 'the default'}")
    return "; ".join(problems) or None


def _in_top_file(policy, rule) -> bool:
    return not rule.file or rule.file == policy.file


def _rule_place(policy, rule) -> str:
    """`7` for a rule of the policy file, `FILE:7` for one in an included file."""
    return str(rule.line) if _in_top_file(policy, rule) else f"{rule.file}:{rule.line}"


def _is_rule(policy, rule, expect: Expectation) -> bool:
    if rule.line != expect.rule_line:
        return False
    if expect.rule_file is None:
        return _in_top_file(policy, rule)
    want = expect.rule_file.replace("\\", "/")
    have = (rule.file or policy.file).replace("\\", "/")
    return have == want or have.endswith("/" + want)


@dataclass
class CaseResult:
    case: Case
    verdict: Verdict
    problem: Optional[str]

    @property
    def stricter(self) -> bool:
        """A mismatch the engine explains as its realisation being stricter on purpose
        (a fuse-bpf program cannot see what the reference evaluator sees)."""
        from .policy import STRICTNESS

        v = self.verdict
        if not self.problem or not v.note:
            return False
        if v.decision.complained:  # a refusal that `mode complain` logs and allows
            return True
        return v.decision.kind == "deny" and STRICTNESS["deny"] >= STRICTNESS[self.case.expect.kind]


def run_cases(policy, cases: list[Case], evaluate: Callable[[Request], Verdict]) -> list[CaseResult]:
    results = []
    for case in cases:
        v = evaluate(case.request)
        results.append(CaseResult(case, v, mismatch(policy, case.expect, v)))
    return results
