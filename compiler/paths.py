"""Paths and globs: normalisation, brace expansion, and matching one component.

A path is a tuple of components (bytes). A pattern is a tuple of parts, each a
literal component, a name glob (`*` any run of bytes, `?` one byte) or `**`
(any number of whole components, zero included). Names are compared as bytes;
case-insensitive policies fold ASCII letters in both patterns and names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union
from .errors import FpolError, UsageProblem

NAME_MAX = 255
# What a directory entry is never called: no lookup asks for them.
NOT_NAMES = frozenset({b".", b".."})
# Brace alternatives multiply; a bound keeps `{a,b}{c,d}...` from exploding.
MAX_ALTERNATIVES = 256

UNQUOTED_PATH = re.compile(rb"/[A-Za-z0-9._+@%~=/-]*")


class PathProblem(UsageProblem, ValueError):
    """What is wrong with a path or glob, with the offset of the trouble in the text."""

    def __init__(self, message: str, hint: Optional[str] = None, code: str = "FP010"):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


@dataclass(frozen=True, order=True)
class Glob:
    """A component pattern with `*` or `?`."""

    text: bytes

    def regex(self, fold: bool) -> "re.Pattern[bytes]":
        return _glob_regex(self.text.lower() if fold else self.text)

    def matches(self, name: bytes, fold: bool = False) -> bool:
        return self.regex(fold).fullmatch(name.lower() if fold else name) is not None


@dataclass(frozen=True, order=True)
class AnyDepth:
    """`**`: any number of whole components."""

    def __repr__(self) -> str:
        return "**"


ANY = AnyDepth()
Part = Union[bytes, Glob, AnyDepth]
Pattern = tuple  # tuple[Part, ...]


_regex_cache: dict[bytes, "re.Pattern[bytes]"] = {}


def _glob_regex(text: bytes) -> "re.Pattern[bytes]":
    rx = _regex_cache.get(text)
    if rx is None:
        out = []
        for b in text:
            ch = bytes([b])
            out.append(b".*" if ch == b"*" else b"." if ch == b"?" else re.escape(ch))
        rx = _regex_cache[text] = re.compile(b"".join(out), re.S)
    return rx


def glob_mask(globs: Sequence[Glob], name: bytes) -> int:
    """Which of `globs` match `name`, as a bitmask (bit i: globs[i]): the glob transition a
    name takes when no literal entry names it."""
    return sum(1 << i for i, g in enumerate(globs) if g.matches(name))


def part_matches(part: Part, name: bytes, fold: bool) -> bool:
    if isinstance(part, Glob):
        return part.matches(name, fold)
    if isinstance(part, bytes):
        return (part.lower() == name.lower()) if fold else part == name
    return True


def normalise_path(value: bytes) -> tuple[bytes, ...]:
    """`/a//b/` -> (b"a", b"b"). Raises PathProblem for anything that is not a clean path."""
    if not value.startswith(b"/"):
        raise PathProblem("path must start with `/` (the mount root)",
                          "paths are absolute inside the mount: write `/" + _show(value) + "`")
    comps = tuple(filter(None, value.split(b"/")))
    # Most paths are clean, which the whole of them shows at once; component by component
    # only to say which problem comes first.
    if b"\0" in value or not NOT_NAMES.isdisjoint(comps) or \
            (len(value) > NAME_MAX and max(map(len, comps), default=0) > NAME_MAX):
        for c in comps:
            _check_component(c)
    return comps


def _check_component(c: bytes) -> None:
    if c in NOT_NAMES:
        raise PathProblem(f"`{c.decode()}` is not allowed in a path",
                          "write the path without `.` and `..` components")
    if b"\0" in c:
        raise PathProblem("NUL byte in a path")
    if len(c) > NAME_MAX:
        raise PathProblem(f"path component of {len(c)} bytes; names are at most {NAME_MAX} bytes")


def expand_braces(text: bytes) -> list[bytes]:
    """`/a/{b,c}/d` -> [/a/b/d, /a/c/d]; nested braces allowed."""
    depth = 0
    for i, b in enumerate(text):
        if b == ord("{"):
            if depth == 0:
                start = i
            depth += 1
        elif b == ord("}"):
            depth -= 1
            if depth < 0:
                raise PathProblem("`}` without a matching `{`", code="FP011")
            if depth == 0:
                inner = text[start + 1:i]
                choices = _split_top(inner)
                results = []
                for choice in choices:
                    for rest in expand_braces(text[i + 1:]):
                        for pre in expand_braces(text[:start] + choice):
                            results.append(pre + rest)
                            if len(results) > MAX_ALTERNATIVES:
                                raise PathProblem(
                                    f"braces expand to more than {MAX_ALTERNATIVES} alternatives",
                                    "split the rule into several rules", code="FP026")
                return list(dict.fromkeys(results))
    if depth:
        raise PathProblem("`{` without a matching `}`", code="FP011")
    return [text]


def _split_top(inner: bytes) -> list[bytes]:
    parts, depth, last = [], 0, 0
    for i, b in enumerate(inner):
        if b == ord("{"):
            depth += 1
        elif b == ord("}"):
            depth -= 1
        elif b == ord(",") and depth == 0:
            parts.append(inner[last:i])
            last = i + 1
    parts.append(inner[last:])
    return parts


def _part(component: bytes) -> Part:
    if component == b"**":
        return ANY
    if b"**" in component:
        raise PathProblem("`**` must be a whole path component",
                          "use `*` inside a name, `**` between slashes", code="FP011")
    if b"*" in component or b"?" in component:
        if b"\0" in component:  # no name holds a NUL: as for literal components
            raise PathProblem("NUL byte in a path")
        return Glob(component)
    _check_component(component)
    return component


def glob_patterns(value: bytes) -> tuple[Pattern, ...]:
    """A `matching` glob -> its patterns (one per brace alternative)."""
    if not value.startswith(b"/"):
        raise PathProblem("glob must start with `/` (the mount root)", code="FP011",
                          hint="use `named` for a pattern on the final name anywhere")
    patterns = []
    for alt in expand_braces(value):
        if not alt.startswith(b"/"):
            raise PathProblem("every brace alternative must keep the leading `/`", code="FP011")
        comps = [c for c in alt.split(b"/") if c]
        parts: list[Part] = []
        for c in comps:
            p = _part(c)
            if p is ANY and parts and parts[-1] is ANY:
                continue  # `**/**` is `**`
            parts.append(p)
        patterns.append(tuple(parts))
    return tuple(dict.fromkeys(patterns))


def name_patterns(value: bytes) -> tuple[Part, ...]:
    """A `named` glob -> one component pattern per brace alternative."""
    if not value:
        raise PathProblem("empty name", code="FP011")
    parts = []
    for alt in expand_braces(value):
        if b"/" in alt:
            raise PathProblem("`named` takes a single name, not a path", code="FP011",
                              hint="use `matching` for a pattern over the whole path")
        if not alt:
            raise PathProblem("empty name among the alternatives", code="FP011")
        if alt == b"**":
            raise PathProblem("`**` is not a name", code="FP011",
                              hint="`named \"*\"` matches every name")
        parts.append(_part(alt))
    return tuple(dict.fromkeys(parts))


def path_text(comps: tuple[bytes, ...]) -> bytes:
    return b"/" + b"/".join(comps)


def render_path(value: bytes, force_quotes: bool = False) -> str:
    """A path or glob as canonical source text: bare when it can be, else quoted."""
    if not force_quotes and UNQUOTED_PATH.fullmatch(value):
        return value.decode("ascii")
    out = ['"']
    text = value.decode("utf-8", "surrogateescape")
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        elif not ch.isprintable() or ch in "\u2028\u2029":
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def show_pattern(pattern: Pattern) -> str:
    parts = []
    for p in pattern:
        if p is ANY:
            parts.append("**")
        elif isinstance(p, Glob):
            parts.append(_show(p.text))
        else:
            parts.append(_show(p))
    return "/" + "/".join(parts)


def _show(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


# Bytes tried, in order, to stand for every byte the globs do not name.
STAND_INS = b"xyzqjk0123456789_"

# Joint NFA states explored when looking for names that realise glob combinations.
MAX_GLOB_STATES = 50_000


class TooManyGlobStates(FpolError):
    pass


def glob_close(t: bytes, states: frozenset) -> frozenset:
    """Glob `t` as an NFA over bytes (state k: k bytes of the text matched): `states` plus
    every state reached from them by skipping `*`."""
    out = set(states)
    for s in states:
        k = s
        while k < len(t) and t[k] == ord("*"):
            k += 1
            out.add(k)
    return frozenset(out)


def glob_step(t: bytes, states: frozenset, byte: int) -> frozenset:
    """The states of glob `t`'s NFA after one more byte (closed)."""
    nxt = set()
    for s in states:
        if s < len(t):
            c = t[s]
            if c == ord("*"):
                nxt.add(s)
            elif c == ord("?") or c == byte:
                nxt.add(s + 1)
    return glob_close(t, frozenset(nxt))


def glob_combinations(texts: list[bytes], avoid: frozenset = frozenset()) -> dict[int, bytes]:
    """Every set of globs that some single non-empty name matches, with one such name.

    Result: bitmask over `texts` -> a witness name not in `avoid`. Each glob is an
    NFA over bytes; their joint state is explored breadth-first over the bytes
    that occur in any glob plus one stand-in for every other byte, so the masks
    found are exactly the realisable ones (the product construction). One breadth-first
    search over joint states, kept whole."""
    if not texts:
        name = b"x"
        while name in avoid:
            name += b"x"
        return {0: name}
    alphabet = sorted({b for t in texts for b in t if b not in b"*?"})
    other = next(b for b in STAND_INS if b not in alphabet) if \
        any(b not in alphabet for b in STAND_INS) else \
        next(b for b in range(1, 256) if b not in alphabet and b != ord("/"))
    alphabet.append(other)

    globs = [Glob(t) for t in texts]

    def mask_of(name: bytes) -> int:
        return glob_mask(globs, name)

    def search(alphabet: list[int], excluded: frozenset) -> dict[int, bytes]:
        """The shortest name (first in alphabet order) for each realisable mask, never an
        `excluded` one: a name that may still grow into an excluded one is kept apart from
        the names that no longer can, so excluding a name hides no mask."""
        prefixes = frozenset(w[:i] for w in excluded for i in range(1, len(w) + 1))
        start = tuple(glob_close(t, frozenset({0})) for t in texts)
        # The start state is not "seen": a non-empty name may lead back to it (`*`).
        seen: set = set()
        queue = [(start, b"")]
        found: dict[int, bytes] = {}
        head = 0
        while head < len(queue):
            joint, word = queue[head]
            head += 1
            for byte in alphabet:
                name = word + bytes([byte])
                nxt = tuple(glob_step(t, joint[i], byte) for i, t in enumerate(texts))
                key = (nxt, name if name in prefixes else None)
                if key in seen:
                    continue
                seen.add(key)
                if len(seen) > MAX_GLOB_STATES:
                    raise TooManyGlobStates(
                        f"{len(texts)} overlapping name globs at one level ("
                        + ", ".join(t.decode("utf-8", "replace") for t in texts[:4]) + ", ...)")
                mask = sum(1 << i for i, states in enumerate(nxt) if len(texts[i]) in states)
                if mask not in found and len(name) <= NAME_MAX and name not in excluded:
                    found[mask] = name
                queue.append((nxt, name))
        return found

    found = search(alphabet, NOT_NAMES)
    # A witness that happens to be a literal name of the policy is replaced by a
    # variant with the same glob matches.
    pad = bytes([other])
    stuck = []
    for mask, name in list(found.items()):
        if name in avoid:
            for cand in (name + pad, pad + name, name + pad * 2, pad * 2 + name, name + pad * 3):
                if cand not in avoid and mask_of(cand) == mask:
                    found[mask] = cand
                    break
            else:
                stuck.append(mask)
    if stuck:
        # No variant served (`?` fixes the length, say): search again over the globs' bytes,
        # the stand-in and a byte no avoided name has, so a name with that byte is never
        # avoided, and any other byte matches what it matches.
        used = set().union(*avoid)
        fresh = next((b for b in STAND_INS if b not in alphabet and b not in used), None)
        if fresh is None:
            fresh = next((b for b in range(1, 256) if b not in alphabet and b not in used
                          and b != ord("/")), None)
        again = search(alphabet + ([fresh] if fresh is not None else []), avoid | NOT_NAMES)
        for mask in stuck:
            # Every name with this mask is avoided only if the avoided names cover it whole
            # (a finite set): then no other name takes this way, and the witness stays.
            if mask in again:
                found[mask] = again[mask]
    return found


def glob_witnesses(texts: list[bytes], avoid: frozenset = frozenset()) -> list[bytes]:
    return [w for _, w in sorted(glob_combinations(texts, avoid).items())]
