"""The case-file format of tests/cases/*.fpol: reading, comparing and rewriting.

A case is a policy whose expected diagnostics are written in it as comments
(the language's `#` comments, so they do not change what is parsed):

    deny wrte under /x  # E:6-10 FP003 unknown operation or group `wrte`

A marker is `SEV:COL-END CODE MESSAGE`:

* SEV is `E` (error) or `W` (warning) and must agree with the code's severity;
* COL is the 1-based column where the diagnostic's span starts, on the line the
  comment is on; END is where the span ends (exclusive): a column on the same
  line, or `LINE:COL` when the span ends on a later line (a continued rule);
* CODE is the FPnnn code and MESSAGE the exact message text.

Several markers may share one comment (`# E:... # W:...`); text before the first
marker is an ordinary comment and is kept. A diagnostic whose line has no room for
a comment (inside an unterminated string, or past the last line) is written as a
full-line header comment with the line number spelled out:

    # expect: E:7:18-19 FP001 unterminated string; expected a path or a quoted string

Header comments may also set check options:

    # flags: --no-daemon

Every diagnostic `check` reports must be expected, and every expectation reported.
A file with no markers expects no diagnostics at all. `pytest --update-cases`
rewrites the markers from what `check` reports (see `update_case`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from fpol.compiler.diagnostics import CODES, ERROR, Diagnostic
from fpol.compiler.driver import check
from fpol.compiler.source import _cut_comment, split

CASES_DIR = Path(__file__).parent / "cases"

FLAGS = {"--no-daemon": ("no_daemon", True)}

_MARKER_START = re.compile(r"(?:^|(?<=\s))#\s*[EW]:(?=\d)")
_MARKER = re.compile(r"#\s*(?P<sev>[EW]):(?P<pos>\S+) (?P<code>FP\d{3}) (?P<message>.*)", re.S)
_HEADER_EXPECT = re.compile(r"#\s*expect:\s*(?P<sev>[EW]):(?:(?P<file>[^\s:]+):)?(?P<line>\d+):(?P<pos>\S+) "
                            r"(?P<code>FP\d{3}) (?P<message>.*)", re.S)
_HEADER_FLAGS = re.compile(r"#\s*flags:(?P<flags>.*)")
_POS = re.compile(r"(?P<col>\d+)-(?:(?P<end_line>\d+):)?(?P<end_col>\d+)")


class CaseFormatError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Expect:
    line: int
    column: int
    end_line: int
    end_column: int
    code: str
    severity: str  # "E" | "W"
    message: str
    # A diagnostic in an included file (relative to tests/cases/), "" for the case file:
    # written as a header line, `# expect: E:include/x.fpol:3:1-11 FP032 ...`.
    file: str = ""

    @staticmethod
    def of(d: Diagnostic, name: str = "") -> "Expect":
        sev = "E" if d.severity == ERROR else "W"
        return Expect(d.span.line, d.span.column, d.span.end_line, d.span.end_column,
                      d.code, sev, d.message, "" if not name or d.file == name else d.file)

    def _pos(self) -> str:
        end = str(self.end_column) if self.end_line == self.line else \
            f"{self.end_line}:{self.end_column}"
        return f"{self.column}-{end}"

    def marker(self) -> str:
        return f"# {self.severity}:{self._pos()} {self.code} {self.message}"

    def header(self) -> str:
        where = f"{self.file}:" if self.file else ""
        return f"# expect: {self.severity}:{where}{self.line}:{self._pos()} {self.code} {self.message}"

    def describe(self) -> str:
        where = f"{self.file}:" if self.file else ""
        return f"{where}{self.line}:{self._pos()} {self.severity} {self.code} {self.message}"


@dataclass
class Case:
    path: Path
    text: str
    options: dict
    expected: list[Expect]

    @property
    def name(self) -> str:
        return self.path.name


def case_paths() -> list[Path]:
    return sorted(CASES_DIR.glob("*.fpol"))


def _expect(sev: str, line: int, pos: str, code: str, message: str, where: str,
            file: str = "") -> Expect:
    m = _POS.fullmatch(pos)
    if not m:
        raise CaseFormatError(f"{where}: bad position `{pos}` (want COL-END or COL-LINE:END)")
    if code not in CODES:
        raise CaseFormatError(f"{where}: unknown code {code}")
    if (CODES[code][0] == ERROR) != (sev == "E"):
        raise CaseFormatError(f"{where}: {code} is a{'n error' if CODES[code][0] == ERROR else ' warning'}"
                              f", but the marker says {sev}")
    end_line = int(m["end_line"]) if m["end_line"] else line
    return Expect(line, int(m["col"]), end_line, int(m["end_col"]), code, sev, message.strip(),
                  file or "")


def _markers(comment_text: str) -> tuple[str, list[str]]:
    """Split a comment into its ordinary text and its markers."""
    starts = [m.start() for m in _MARKER_START.finditer(comment_text)]
    if not starts:
        return comment_text, []
    bounds = starts + [len(comment_text)]
    return comment_text[:starts[0]].rstrip(), [comment_text[a:b].strip()
                                               for a, b in zip(bounds, bounds[1:])]


def parse_case(path: Path) -> Case:
    text = path.read_bytes().decode("utf-8")
    src = split(path.name, text)
    options: dict = {}
    expected: list[Expect] = []
    for c in src.comments:
        where = f"{path.name}:{c.line}"
        if not c.trailing and (m := _HEADER_EXPECT.fullmatch(c.text)):
            expected.append(_expect(m["sev"], int(m["line"]), m["pos"], m["code"], m["message"], where,
                                    m["file"]))
            continue
        if not c.trailing and re.match(r"#\s*expect\s*:", c.text):
            raise CaseFormatError(f"{where}: malformed `# expect:` line: {c.text}")
        if not c.trailing and (m := _HEADER_FLAGS.fullmatch(c.text)):
            for flag in m["flags"].split():
                if flag not in FLAGS:
                    raise CaseFormatError(f"{where}: unknown flag {flag} (known: {', '.join(FLAGS)})")
                key, value = FLAGS[flag]
                options[key] = value
            continue
        _, markers = _markers(c.text)
        for marker in markers:
            m = _MARKER.fullmatch(marker)
            if not m:
                raise CaseFormatError(f"{where}: malformed marker `{marker}` "
                                      "(want `# E:COL-END FPnnn message`)")
            expected.append(_expect(m["sev"], c.line, m["pos"], m["code"], m["message"], where))
    return Case(path, text, options, sorted(expected))


def actual(text: "str | bytes", name: str, options: dict) -> list[Expect]:
    # Includes resolve from tests/cases/ (the files they name live in tests/cases/include/).
    result = check(text, name, origin=str(CASES_DIR / name), **options)
    return sorted(Expect.of(d, name) for d in result.diagnostics)


def compare(case: Case, got: list[Expect]) -> str:
    """'' when the expectations hold, else a readable report with a diff."""
    if got == case.expected:
        return ""
    lines = case.text.split("\n")

    def listing(items: Iterable[Expect]) -> list[str]:
        return [e.describe() for e in items]

    diff = difflib.unified_diff(listing(case.expected), listing(got),
                                fromfile=f"{case.name} (expected)", tofile=f"{case.name} (actual)",
                                lineterm="", n=2)
    out = [f"diagnostics of tests/cases/{case.name} differ from its expectations "
           "(LINE:COL-END SEV CODE message):", *diff, "", "source lines involved:"]
    involved = sorted({e.line for e in set(got) ^ set(case.expected)})
    for n in involved:
        if 1 <= n <= len(lines):
            out.append(f"{n:>4} | {lines[n - 1].rstrip(chr(13))}")
    out.append("")
    out.append("if the new output is intended: python3 -m pytest tests/test_cases.py --update-cases")
    return "\n".join(out)


# --- rewriting ------------------------------------------------------------------------

def _has_room(body: str) -> bool:
    """Can a comment be appended to this physical line (without its line ending)?"""
    if _cut_comment(body)[1] is not None:
        return True  # there is a comment already: markers extend it
    return _cut_comment(body + "  #")[1] == len(body) + 2


def _strip_markers(text: str) -> tuple[list[str], list[str], int]:
    """The file's lines (bodies and line endings) without expectation markers,
    and the index where the `# expect:` block goes."""
    src = split("case", text)
    raw = text.split("\n")
    bodies = [line[:-1] if line.endswith("\r") else line for line in raw]
    ends = ["\r\n" if line.endswith("\r") else "\n" for line in raw]
    ends[-1] = "\r" if raw[-1].endswith("\r") else ""
    drop: set[int] = set()
    for c in src.comments:
        i = c.line - 1
        if not c.trailing and _HEADER_EXPECT.fullmatch(c.text):
            drop.add(i)
            continue
        kept, markers = _markers(c.text)
        if markers:
            code = bodies[i][:c.column - 1]
            bodies[i] = code + kept if kept else code.rstrip()
    if drop:
        first = min(drop)
        header_at = first - sum(1 for i in drop if i < first)
    else:  # after the `# flags:` lines at the top, if any
        header_at = 0
        while header_at < len(bodies) and _HEADER_FLAGS.fullmatch(bodies[header_at]):
            header_at += 1
    keep = [i for i in range(len(bodies)) if i not in drop]
    return [bodies[i] for i in keep], [ends[i] for i in keep], header_at


def render_case(bodies: list[str], ends: list[str], header_at: int, headers: list[str],
                inline: dict[int, list[str]]) -> str:
    nl = "\r\n" if any(e == "\r\n" for e in ends) else "\n"
    out_bodies = bodies[:header_at] + headers + bodies[header_at:]
    out_ends = ends[:header_at] + [nl] * len(headers) + ends[header_at:]
    if headers and header_at > 0 and not out_ends[header_at - 1]:
        out_ends[header_at - 1] = nl  # headers after a last line without a line ending
    for line, markers in inline.items():
        body = out_bodies[line - 1]
        sep = " " if _cut_comment(body)[1] is not None else "  "
        out_bodies[line - 1] = body + sep + " ".join(markers)
    return "".join(b + e for b, e in zip(out_bodies, out_ends))


def update_case(case: Case) -> str:
    """The case's text with its markers rewritten from what `check` reports now.

    `# expect:` lines shift the lines below them, so the layout is found by
    iterating until the number of header lines is stable."""
    bodies, ends, header_at = _strip_markers(case.text)
    n_headers = 0
    for _ in range(8):
        placeholder = render_case(bodies, ends, header_at, ["# expect: (pending)"] * n_headers, {})
        got = actual(placeholder, case.name, case.options)
        out_bodies = bodies[:header_at] + ["#"] * n_headers + bodies[header_at:]
        last_is_tail = ends[-1] == "" and bodies[-1] == ""
        headers, inline = [], {}
        for e in got:
            n_lines = len(out_bodies)
            on_tail = last_is_tail and e.line == n_lines
            if not e.file and 1 <= e.line <= n_lines and not on_tail and _has_room(out_bodies[e.line - 1]) \
                    and not (header_at <= e.line - 1 < header_at + n_headers):
                inline.setdefault(e.line, []).append(e.marker())
            else:
                headers.append(e.header())
        if len(headers) == n_headers:
            return render_case(bodies, ends, header_at, headers, inline)
        n_headers = len(headers)
    raise CaseFormatError(f"{case.name}: could not lay out the expectations; edit it by hand")
