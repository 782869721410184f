"""Template context -> C text, through the jinja2 templates in templates/.

Two outputs from one context: the struct_ops object's source (policy.bpf.c.j2)
and the check object's (check.bpf.c.j2); both include the same decision logic
(logic.h.j2) and ABI header (abi.h.j2).
"""

from __future__ import annotations

import functools
import re

import jinja2

from .lower import Model, unpack


def _cname(atom: str) -> str:
    """`open:rw` -> `OPEN_RW`, `access:-` -> `ACCESS_NONE`."""
    return atom.replace(":-", "_NONE").replace(":", "_").upper()


def _ccomment(text: str) -> str:
    """Text safe inside a C block comment, on one line."""
    text = str(text).replace("*/", "*\\/").replace("/*", "/\\*")
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)


def _cident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _chunks(data: bytes, size: int):
    if not data:
        yield "0,"
        return
    for i in range(0, len(data), size):
        part = data[i:i + size]
        text = "".join(chr(b) if 32 <= b < 127 and chr(b) not in "*/\\" else "." for b in part)
        yield " ".join(f"0x{b:02x}," for b in part) + f"  /* {text} */"


def _describe(word: int, model: Model) -> str:
    d = unpack(word)
    text = d["kind"]
    if d["errno"]:
        text += f" {d['errno']}"
    if d["mode"]:
        text += f" {d['mode']}"
    if d["audit"]:
        text += " +audit"
    if d["rule"] is not None:
        line, rule_text = model.rules[d["rule"]]
        text += f" ({model.source_name}:{line} {rule_text})"
    else:
        text += f" (default {model.policy.default.text})"
    return text


def _glob_body(g) -> str:
    """C that matches one name glob: fixed segments around `*`s, `?` any byte."""
    segs = g.segments
    lines = []

    def compare(seg: bytes, base: str) -> None:
        for j, b in enumerate(seg):
            if b != ord("?"):
                lines.append(f"\tif ({base}[{j}] != {b}) return 0;")

    fixed = sum(len(s) for s in segs)
    if len(segs) == 1:
        lines.append(f"\tif (len != {fixed}) return 0;")
        compare(segs[0], "s")
        lines.append("\treturn 1;")
        return "\n".join(lines)
    first, middle, last = segs[0], segs[1:-1], segs[-1]
    lines.append(f"\tif (len < {fixed}) return 0;")
    compare(first, "s")
    if last:
        lines.append(f"\t__u32 off = len - {len(last)};")
        lines.append("\tfpol_barrier_var(off);")
        lines.append(f"\tif (off > FPOL_NAME_MAX - {len(last)}) return 0;")
        lines.append("\tconst __u8 *t = s + off;")
        compare(last, "t")
    lines.append(f"\t__u32 pos = {len(first)}, end = len - {len(last)};")
    for k, seg in enumerate(middle):
        if not seg:
            continue
        n = len(seg)
        lines.append(f"\t{{ /* segment \"{_ccomment(seg.decode('utf-8', 'replace'))}\" */")
        lines.append("\t\tint found = 0;")
        lines.append("\t\tfor (__u32 p = 0; p < FPOL_NAME_MAX; p++) {")
        lines.append("\t\t\tif (p < pos) continue;")
        lines.append(f"\t\t\tif (p + {n} > end || p > FPOL_NAME_MAX - {n}) break;")
        conds = " && ".join(f"s[p + {j}] == {b}" for j, b in enumerate(seg) if b != ord("?")) or "1"
        lines.append(f"\t\t\tif ({conds}) {{ pos = p + {n}; found = 1; break; }}")
        lines.append("\t\t}")
        lines.append("\t\tif (!found) return 0;")
        lines.append("\t}")
    lines.append("\treturn 1;")
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fpol.templates", "."),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(cname=_cname, ccomment=_ccomment, cident=_cident, chunks=_chunks,
                       glob_body=_glob_body, describe=_describe)
    macros = env.get_template("programs.j2").module
    env.filters["program"] = lambda p, model: macros.program(p, model)
    return env


_logic_cache: dict[int, tuple[Model, str]] = {}


def _logic(model: Model, context: dict) -> str:
    """The decision logic both objects include, rendered once per model."""
    hit = _logic_cache.get(id(model))
    if hit is None or hit[0] is not model:
        _logic_cache.clear()
        hit = _logic_cache[id(model)] = (model, _environment().get_template("logic.h.j2").render(**context))
    return hit[1]


def render(model: Model, which: str = "struct_ops") -> str:
    """The C source of the struct_ops object (`struct_ops`) or the check object (`check`)."""
    name = {"struct_ops": "policy.bpf.c.j2", "check": "check.bpf.c.j2"}[which]
    context = dict(vars(model))
    context["model"] = model
    context["logic"] = _logic(model, context)
    text = _environment().get_template(name).render(**context)
    # Blank-line runs left by template control lines are noise in the output.
    return re.sub(r"\n{3,}", "\n\n", text)
