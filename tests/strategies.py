"""Hypothesis strategies for policies and requests: the one source for every property test.

`policies()` writes syntactically valid `.fpol` text using every form of the language
(docs/language.md): all four actions, `redirect` with `to userspace`, `instead`,
`before` and `after`, every op and group name, errnos (aliases and rare ones included),
scopes `under`, `at`, `matching` and `named`, subject conditions (`by` lists and `except
by` items: uid and gid points and ranges, overlapping, user and group names, leading zeros),
globs with `*`, `?`, `**` and `{a,b}` (nested
and empty alternatives), names with `[..]` (ordinary characters), quoted names with
`\\"`, `\\\\` and `\\xNN` escapes, non-UTF-8 bytes, unicode and 255-byte names, headers
(`policy`, `abi`, `mode`, `names`, `default` in all forms) in any order, comments,
continuation lines, blank lines, tabs and form feeds, CRLF line ends and a byte order mark.

`requests()` draws requests on every op, with open flags and access masks (all bits the
atoms look at, and others), two-path requests (rename, link, copy_file_range), names
from the same vocabulary as the policies (so rules do match), their case variants, and
arbitrary unicode, byte and long names, and a requester (uid, gid): mostly ids at and
beside the bounds the policies' subject conditions use (where an off-by-one would show),
sometimes ids far from them.

The text is valid syntax; it may still have semantic problems (ties, impossible
userspace modes, rules that decide nothing), which `check` reports. With the defaults
most generated policies check clean (the kernel tests compile only those); choices that
tend to produce errors are made rarely.
"""

from __future__ import annotations

import os
import re

from hypothesis import settings
from hypothesis import strategies as st

from fpol.compiler import ops
from fpol.compiler.analyse import AFTER_SUPPORTED, BEFORE_UNSUPPORTED
from fpol.compiler.evaluate import Request

# --- how much to search ---------------------------------------------------------------------

# FPOL_FUZZ_SCALE (docs/fuzzing.md): 1 in the suite; N > 1 for a longer, fresh search.
# tests/conftest.py loads the matching hypothesis profile ("suite" or "search").
SCALE = max(1, int(os.environ.get("FPOL_FUZZ_SCALE", "1")))


def searching(max_examples: int, parent: settings | None = None, *, scale: bool = True,
              **kwargs) -> settings:
    """Settings for a property test that follows the profile: in the suite, `max_examples`
    drawn derandomised (the same examples on every run); with FPOL_FUZZ_SCALE=N > 1, a
    fresh search on every run, of N times as many examples unless `scale` is False."""
    return settings(parent, max_examples=max_examples * (SCALE if scale else 1),
                    derandomize=SCALE == 1, **kwargs)


# --- names --------------------------------------------------------------------------------

# Names that mean themselves everywhere, globs included (no `*?{},/`).
NAMES: tuple[bytes, ...] = (
    b"a", b"b", b"c", b"Data", b"x.log", b"k.key", b"id_rsa", b"-x", b".hidden",
    b"d d", b"[ab]", b"q\"t", b"b\\s", b"caf\xc3\xa9", b"\xc3\xa9", b"\xff", b"tab\tx",
    b"n" * 255,
)
# Names with glob characters: ordinary in `under`/`at` and in requests, patterns elsewhere.
PLAIN_ONLY_NAMES: tuple[bytes, ...] = (b"a*b", b"?", b"{x}", b"a,b")

# Name globs (one component; `named` and parts of `matching`).
NAME_GLOBS: tuple[str, ...] = (
    "*", "?", "*.log", "*.key", "k*.key", "a*", "*a*", "?*", "id_*", "[ab]*", "*\\x2e*",
    "{a,b}", "{*.key,*.pem,id_*}", "{x.log,k*}", "{a,{b,c}}", "x{,.log}", "caf\u00e9", "??",
)

SAFE_ERRNOS = ("EACCES", "EPERM", "EROFS", "ENOENT", "EXDEV", "ENOSPC", "EBUSY")
# Aliases and rare errnos: the canonical name is one of two spellings, or the value is high.
ODD_ERRNOS = ("ENOTSUP", "EOPNOTSUPP", "EWOULDBLOCK", "EDEADLOCK", "EHWPOISON",
              "ENOTRECOVERABLE", "EIO", "E2BIG")

OP_WORDS: tuple[str, ...] = ops.GROUPS + tuple(o for o in ops.SINGLE_OPS if o not in ops.GROUPS)


def _supports(word: str, mode: str) -> bool:
    names = {ops.atom_op(a) for a in ops.EXPANSION[word]}
    if mode == "before":
        return not names & BEFORE_UNSUPPORTED
    return names <= AFTER_SUPPORTED


MODE_WORDS = {m: tuple(w for w in OP_WORDS if _supports(w, m)) for m in ("before", "after")}


def _escape_byte(b: int) -> str:
    return f"\\x{b:02x}" if b & 1 else f"\\x{b:02X}"  # both cases of hex digits


@st.composite
def quoted(draw, value: bytes) -> str:
    """`value` as a quoted string, each character written plainly or as `\\xNN` escapes."""
    out = ['"']
    text = value.decode("utf-8", "surrogateescape")
    for ch in text:
        raw = ch.encode("utf-8", "surrogateescape")
        plain_ok = ch.isprintable() or ch == "\t"
        if ch == '"':
            out.append('\\"' if draw(st.integers(0, 3)) else "\\x22")
        elif ch == "\\":
            out.append("\\\\" if draw(st.integers(0, 3)) else "\\x5c")
        elif plain_ok and draw(st.integers(0, 7)):
            out.append(ch)
        else:
            out.append("".join(_escape_byte(b) for b in raw))
    out.append('"')
    return "".join(out)


_UNQUOTED_OK = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+@%~=/-")


@st.composite
def path_spelling(draw, comps: tuple[bytes, ...]) -> str:
    """A plain path (`under`, `at`): `//` and a trailing `/` sometimes, quoted when it must be."""
    sep = draw(st.sampled_from([b"/", b"/", b"/", b"//"]))
    value = b"/" + sep.join(comps)
    if comps and draw(st.integers(0, 4)) == 0:
        value += b"/"
    if set(value) <= _UNQUOTED_OK and draw(st.integers(0, 2)):
        return value.decode("ascii")
    return draw(quoted(value))


# --- scopes ---------------------------------------------------------------------------------

def _names(plain: bool = False):
    return st.sampled_from(NAMES + PLAIN_ONLY_NAMES if plain else NAMES)


@st.composite
def plain_path(draw, min_size: int = 0) -> tuple[bytes, ...]:
    return tuple(draw(st.lists(_names(plain=True), min_size=min_size, max_size=3)))


@st.composite
def glob_component(draw) -> str:
    """One component of a `matching` glob, as text to go inside quotes."""
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        name = draw(_names())
        return draw(quoted(name))[1:-1]
    if kind == 4:
        return "**"
    if kind == 5:
        return "{a,b/c}"  # an alternative spanning components
    return draw(st.sampled_from(NAME_GLOBS))


@st.composite
def matching_glob(draw) -> str:
    comps = draw(st.lists(glob_component(), min_size=0, max_size=4))
    return '"/' + "/".join(comps) + '"'


@st.composite
def named_glob(draw) -> str:
    if draw(st.booleans()):
        return draw(quoted(draw(_names())))
    return '"' + draw(st.sampled_from(NAME_GLOBS)) + '"'


@st.composite
def scopes(draw) -> str:
    kind = draw(st.sampled_from(["under", "under", "at", "matching", "named"]))
    if kind in ("under", "at"):
        return f"{kind} {draw(path_spelling(draw(plain_path(min_size=0 if kind == 'under' else 1))))}"
    if kind == "matching":
        return f"matching {draw(matching_glob())}"
    return f"named {draw(named_glob())}"


# --- who is asking ---------------------------------------------------------------------------

# The ids subject conditions name: points and range bounds overlap, so rules cut the id
# space at shared and at neighbouring bounds. 4294967294 is the largest id a rule may name.
SUBJECT_IDS: tuple[int, ...] = (0, 1, 4, 7, 33, 34, 50, 100, 999, 1000, 1999, 60000, 65534,
                                4294967294)
# Users and groups of Debian's base-passwd (the names must resolve where the tests run:
# those missing here are never drawn). Their ids are among SUBJECT_IDS.
_USERS = ("root", "daemon", "www-data", "backup", "nobody")
_GROUPS = ("root", "adm", "staff", "www-data", "nogroup")


def _resolvable(names, lookup) -> tuple[str, ...]:
    out = []
    for n in names:
        try:
            lookup(n)
        except KeyError:
            continue
        out.append(n)
    return tuple(out)


import grp as _grp  # noqa: E402
import pwd as _pwd  # noqa: E402

USERS = _resolvable(_USERS, _pwd.getpwnam)
GROUPS = _resolvable(_GROUPS, _grp.getgrnam)
# A request's ids: each bound and its neighbours (4294967295 is (uid_t)-1, which no rule names).
REQUEST_IDS: tuple[int, ...] = tuple(sorted({v + d for v in SUBJECT_IDS for d in (-1, 0, 1)
                                             if 0 <= v + d < 1 << 32}))


@st.composite
def _id_spelling(draw, value: int) -> str:
    return ("0" * draw(st.integers(1, 2)) if draw(st.integers(0, 9)) == 0 else "") + str(value)


@st.composite
def subject(draw, clean: bool = True) -> str:
    """One subject: `uid N`, `uid N-M`, `gid N`, `gid N-M`, `user NAME`, `group NAME`. With
    `clean`, an error (empty range, an id out of range) is rare, not impossible."""
    kind = draw(st.sampled_from(["uid", "uid", "uid", "gid", "gid", "range", "range", "name"]))
    if kind == "name" and (USERS or GROUPS):
        if USERS and (not GROUPS or draw(st.booleans())):
            return "user " + draw(st.sampled_from(USERS))
        return "group " + draw(st.sampled_from(GROUPS))
    axis = draw(st.sampled_from(["uid", "gid"])) if kind in ("range", "name") else kind
    bad_at = 60 if clean else 8
    if draw(st.integers(0, bad_at)) == bad_at:  # diagnosed: FP038, FP039 (never the simplest)
        bad = draw(st.sampled_from(["5-3", "4294967295", "0-4294967295"]))
        return f"{axis} {bad}"
    low = draw(st.sampled_from(SUBJECT_IDS))
    if kind in ("range", "name"):
        high = draw(st.sampled_from([v for v in SUBJECT_IDS if v >= low]))
        return f"{axis} {draw(_id_spelling(low))}-{draw(_id_spelling(high))}"
    return f"{axis} {draw(_id_spelling(low))}"


@st.composite
def subject_list(draw, clean: bool = True) -> str:
    """`S1, S2, ...`: alternatives (a repeat, warned about, now and then)."""
    items = draw(st.lists(subject(clean), min_size=1, max_size=2))
    if draw(st.integers(0, 12)) == 12:
        items.append(items[0])
    return ", ".join(items)


# ...and ids no rule names, anywhere in the 32-bit space.
FAR_IDS: tuple[int, ...] = (12345, 123456789, 2147483647, 2147483648, 4000000000)
# Requesters as (uid, gid) pairs, drawn in one choice (a list of 250 requests must stay
# within what hypothesis generates quickly): root most often; every id with gid 0 and with
# a gid of its own; some pairs of two interesting ids.
_IDS = REQUEST_IDS + FAR_IDS
REQUESTERS: tuple[tuple[int, int], ...] = (
    ((0, 0),) * 40 + tuple((i, 0) for i in _IDS) + tuple((0, i) for i in _IDS)
    + tuple((i, i) for i in _IDS)
    + tuple((a, b) for k, a in enumerate(_IDS) for b in _IDS[k % 7::7] if a != b))
_REQUESTER = st.sampled_from(REQUESTERS)


def requester_ids() -> st.SearchStrategy:
    """(uid, gid) of a request: root often, else ids on and beside the rules' bounds
    (uid and gid alike, apart and together), now and then far from them."""
    return _REQUESTER


# --- rules and policies ----------------------------------------------------------------------

@st.composite
def errnos(draw) -> str:
    if draw(st.integers(0, 5)):
        return draw(st.sampled_from(SAFE_ERRNOS))
    return draw(st.sampled_from(ODD_ERRNOS))


@st.composite
def op_list(draw, words=OP_WORDS) -> str:
    chosen = draw(st.lists(st.sampled_from(words), min_size=1, max_size=3))
    if draw(st.integers(0, 5)) == 0:
        chosen.append(chosen[0])  # a repeat
    sep = draw(st.sampled_from([", ", ",", " , ", ",\t"]))
    return sep.join(chosen)


_WORD = re.compile(r'"(?:\\.|[^"\\])*"|[^ "]+')
CONTINUATIONS = ("\\\n   ", "\\  # c\n   ", "\\\n\\\n", "\\\t\r\n\t", "\\\n")
SPACES = (" ", " ", " ", "  ", "\t", " \f ")


@st.composite
def rules(draw, clean: bool = True, subjects: bool = True) -> str:
    """One rule. `clean` makes error-prone choices (before/after on ops that cannot take
    them, more than one errno, malformed ids) rare rather than impossible. `subjects`: a
    `by` list on about a fifth of the rules, `except by` items on some."""
    action = draw(st.sampled_from(["allow", "deny", "deny", "audit", "redirect"]))
    head = [action]
    mode = None
    if action == "redirect":
        mode = draw(st.sampled_from(["", "instead", "before", "after"]))
    if mode in ("before", "after") and (not clean or draw(st.integers(0, 9))):
        head.append(draw(op_list(MODE_WORDS[mode])))
    else:
        head.append(draw(op_list()))
    if action == "redirect":
        head.append("to userspace" + (f" {mode}" if mode else ""))
    clauses = [draw(scopes()) for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2])))]
    if len(clauses) == 2 and draw(st.integers(0, 4)):
        clauses[1] = f"named {draw(named_glob())}"  # a second scope that narrows the first
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        items = draw(st.lists(scopes(), min_size=1, max_size=2))
        if subjects and draw(st.integers(0, 5)) == 0:  # scopes and requesters removed at once
            items.append("by " + draw(subject_list(clean)))
        clauses.append("except " + ", ".join(items))
    if subjects and draw(st.integers(0, 4)) == 0:
        clauses.append("by " + draw(subject_list(clean)))
    if subjects and draw(st.integers(0, 7)) == 0:
        clauses.append("except by " + draw(subject_list(clean)))
    if action == "deny" and draw(st.integers(0, 2)) == 0:
        clauses.append("with " + draw(errnos()))
    clauses = draw(st.permutations(clauses))
    # The target must follow the op list; clauses may come in any order.
    parts = [head[0], head[1]] + head[2:] + list(clauses)
    # Between words (never inside a quoted string): a continuation, or some blanks.
    words = _WORD.findall(" ".join(parts))
    out = [words[0]]
    for w in words[1:]:
        if draw(st.integers(0, 11)) == 0:
            out.append(" " + draw(st.sampled_from(CONTINUATIONS)))
        else:
            out.append(draw(st.sampled_from(SPACES)))
        out.append(w)
    line = "".join(out)
    if draw(st.integers(0, 3)) == 0:
        line += draw(st.sampled_from(["  # ", " #", "\t# "])) + draw(
            st.text(alphabet="abc #\\\"é*", max_size=10))
    return line


@st.composite
def headers(draw) -> list[str]:
    lines = []
    if draw(st.integers(0, 2)) == 0:
        lines.append("policy " + draw(st.text(alphabet="abcxyz_019", min_size=1, max_size=8)))
    if draw(st.integers(0, 3)) == 0:
        lines.append("abi " + draw(st.sampled_from(["v3", "v4"])))
    if draw(st.integers(0, 2)) == 0:
        lines.append("mode " + draw(st.sampled_from(["enforce", "complain"])))
    if draw(st.integers(0, 2)) == 0:
        lines.append("names " + draw(st.sampled_from(["case-sensitive", "case-insensitive"])))
    default = draw(st.sampled_from([
        None, None, "default allow", "default deny", "default deny with EPERM",
        "default deny with ENOTSUP", "default redirect to userspace",
        "default redirect to userspace instead"]))
    if default:
        lines.append(default)
    return lines


@st.composite
def policies(draw, min_rules: int = 0, max_rules: int = 6, subjects: bool = True) -> str:
    """A syntactically valid policy (see the module docstring)."""
    lines = draw(headers())
    lines += [draw(rules(subjects=subjects))
              for _ in range(draw(st.integers(min_rules, max_rules)))]
    lines += draw(st.lists(st.sampled_from(["", "# a comment", "   ", "\t# indented \\",
                                            "#", "\f"]), max_size=2))
    lines = draw(st.permutations(lines))
    newline = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    text = newline.join(lines) + draw(st.sampled_from(["", newline]))
    if draw(st.integers(0, 15)) == 0:
        text = "\ufeff" + text
    return text


# --- requests ----------------------------------------------------------------------------

REQUEST_NAMES: tuple[bytes, ...] = NAMES + PLAIN_ONLY_NAMES + (
    b"DATA", b"X.LOG", b"K.Key", b"ID_RSA", b"A", b"B", b"CAF\xc3\xa9", b"CAF\xc3\x89",
    b"x.logx", b"k.ke", b"pem.pem", b"id_", b"ab", b"aa", b"cx.log", b"N" * 255,
)

_REQUEST_NAME = st.one_of(
    st.sampled_from(REQUEST_NAMES),
    st.sampled_from(REQUEST_NAMES),
    st.text(min_size=1, max_size=12).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(min_size=1, max_size=12),
    st.integers(200, 255).map(lambda n: b"L" * n),
).filter(lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))

OPEN_FLAG_BITS = tuple(ops.OPEN_FLAGS[n] for n in (
    "O_TRUNC", "O_APPEND", "FMODE_EXEC", "O_CREAT", "O_EXCL", "O_NONBLOCK", "O_DIRECTORY",
    "O_CLOEXEC", "O_NOFOLLOW", "O_SYNC", "O_PATH", "O_LARGEFILE"))


@st.composite
def open_flags(draw) -> int:
    flags = draw(st.integers(0, 3))  # O_RDONLY, O_WRONLY, O_RDWR and the invalid 3
    for bit in draw(st.lists(st.sampled_from(OPEN_FLAG_BITS), max_size=3)):
        flags |= bit
    return flags


@st.composite
def request_paths(draw, min_depth: int = 1, max_depth: int = 5) -> tuple[bytes, ...]:
    return tuple(draw(st.lists(_REQUEST_NAME, min_size=min_depth, max_size=max_depth)))


@st.composite
def requests(draw, min_depth: int = 1, max_depth: int = 5, subjects: bool = True) -> Request:
    """A request on any op; paths of `min_depth`..`max_depth` components (the kernel
    engine takes 1..16); made by uid 0, gid 0 unless `subjects` (then see requester_ids)."""
    op = draw(st.sampled_from(ops.SINGLE_OPS))
    path = draw(request_paths(min_depth, max_depth))
    to = draw(request_paths(min_depth, max_depth)) if op in ops.TWO_PATH_OPS else None
    flags = draw(open_flags()) if op in ("open", "create") else 0
    mask = draw(st.integers(0, 15)) if op == "access" else 0  # MAY_EXEC|WRITE|READ|APPEND
    uid, gid = draw(requester_ids()) if subjects else (0, 0)
    return Request(op, path, to, flags, mask, uid=uid, gid=gid)


# --- near misses ------------------------------------------------------------------------------

# Characters and words that matter to the lexer, the parser and the analyser.
EDIT_PIECES = ("\\", "\\\n", "\n", "\r\n", "\r", '"', "#", ",", " ", "\t", "{", "}", "*", "**",
               "?", "/", "//", "\\x", "\\x4", "\\q", "\0", "\ufeff", "\u2028", "é", "\udcff",
               "deny", "allow", "redirect", "to userspace", "before", "except", "with", "under",
               "at", "named", "matching", "default", "policy", "EPERM", "all", "read", "..",
               "by", "uid", "gid 5-", "user", "group", "-", "4294967295", "uid 0,")


@st.composite
def mutated(draw, base=None) -> str:
    """A policy with a few random edits: insertions of significant characters and words,
    deletions, and duplications. Mostly almost valid, so it gets deep into the front end."""
    text = draw(base if base is not None else policies())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.integers(0, 2))
        if kind == 0:
            text = text[:at] + draw(st.sampled_from(EDIT_PIECES)) + text[at:]
        elif kind == 1:
            end = draw(st.integers(at, min(len(text), at + 12)))
            text = text[:at] + text[end:]
        else:
            end = draw(st.integers(at, min(len(text), at + 12)))
            text = text[:end] + text[at:end] + text[end:]
    return text
