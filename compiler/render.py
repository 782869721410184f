"""Template context -> C text, through the jinja2 templates in templates/.

Two outputs from one context: the struct_ops object's source (policy.bpf.c.j2)
and the check object's (check.bpf.c.j2); both include the same decision logic
(logic.h.j2) and ABI header (abi.h.j2).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import jinja2

from .abi import C_LAYOUT, C_MACROS, unpack
from .driver import no_collections
from .lower import Model
from .memo import derived


@functools.lru_cache(maxsize=None)  # a policy has a few dozen atoms, named again and again
def _cname(atom: str) -> str:
    """`open:rw` -> `OPEN_RW`, `access:-` -> `ACCESS_NONE`."""
    return atom.replace(":-", "_NONE").replace(":", "_").upper()


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _ccomment(text: str) -> str:
    """Text safe inside a C block comment, on one line."""
    text = str(text).replace("*/", "*\\/").replace("/*", "/\\*")
    return text if text.isprintable() else _CONTROL.sub("?", text)  # control characters aren't


class _Said(dict):
    """_ccomment of texts, each distinct one worked out once: literal names and glob names
    repeat (1,040 distinct names among 27,105 literals at 10,000 rules, 10 among 32,902
    glob masks), and a hit is a plain lookup."""

    def __missing__(self, text: str) -> str:
        said = self[text] = _ccomment(text)
        return said


_NOT_CIDENT = re.compile(r"[^A-Za-z0-9_]")


def _cident(name: str) -> str:
    if name.isascii() and name.isidentifier():  # nothing to replace (the common case)
        return name
    return _NOT_CIDENT.sub("_", name)


def _chunks(data: bytes, size: int):
    if not data:
        yield "0,"
        return
    for i in range(0, len(data), size):
        part = data[i:i + size]
        text = "".join(chr(b) if 32 <= b < 127 and chr(b) not in "*/\\" else "." for b in part)
        yield " ".join(f"0x{b:02x}," for b in part) + f"  /* {text} */"


def _describe(word: int, model: Model) -> str:
    """A decision word in words, as the comments say it (safe in one): once per distinct
    word (a default_filter program's switch describes a word per opcode)."""
    described: dict[int, str] = derived(model, "_described", dict)
    text = described.get(word)
    if text is None:
        text = described[word] = _ccomment(_description(word, model))
    return text


def _description(word: int, model: Model) -> str:
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


# The big tables (one entry per class, row, literal slot, instance, program) are formatted
# here rather than by template loops: at 10,000 rules jinja's per-item overhead dominated
# the compile. The templates keep the file's structure; these write the entries.

def _rule_entries(model: Model) -> str:
    return "".join([f"/* rule {i}: {model.source_name}:{line} {_ccomment(text)} */\n"
                    for i, (line, text) in enumerate(model.rules)])


def _class_entries(classes) -> str:
    return "".join([
        f"\t/* class {c.id}: e.g. {_ccomment(c.example)} (instance {c.instance}) */\n"
        f"\t{{ .row = {c.row}, .default_child = {c.default_child}, .flags = "
        f"{(1 if c.default_inherit_ok else 0) + (2 if c.daemon_lookup else 0)}"
        + (f", .globs = {c.glob_first}, .masks = {c.mask_first}, .nglobs = {c.nglobs}, "
           f".nmasks = {c.nmasks}" if c.nglobs else "")
        + " },\n"
        for c in classes])


def _class_glob_entries(class_globs, globs, runs) -> str:
    """A line per run of glob ids (classes testing the same globs share one), the globs
    and the classes named in the comment."""
    if not class_globs:
        return "\t0, /* no class tests a glob */\n"
    out = []
    ends = [offset for offset, _ in runs[1:]] + [len(class_globs)]
    for (offset, classes), end in zip(runs, ends):
        ids = [g for _, g in class_globs[offset:end]]
        names = ", ".join(f'"{_ccomment(globs[g].text)}"' for g in ids)
        who = f"class {classes[0]}" if len(classes) == 1 else \
            f"classes {', '.join(map(str, classes))}"
        out.append(f"\t/* [{offset}] {who}: {names} */\n\t" + " ".join(f"{g}," for g in ids) + "\n")
    return "".join(out)


def _glob_mask_entries(masks, said: _Said) -> str:
    if not masks:
        return "\t{ 0, 0, 0 }, /* no class tests a glob */\n"
    return "".join([
        f"\t[{i}] = {{ 0x{m.mask:x}, {m.child}{' | FPOL_INHERIT_OK' if m.inherit_ok else ''}, {m.cls} }}, "
        f"/* class {m.cls}: names matching {said[m.names]} -> class {m.child} */\n"
        for i, m in enumerate(masks)])


def _row_entries(rows) -> str:
    """A row: its first group's word fills it, then the other groups' atoms, each group's
    slots four to a line. Rows set the same few dozen lists of atoms: each list's lines
    are written once (_slot_lines), the word put in per group; and each group (word,
    atoms, rule) is written once (11,336 distinct of 43,985 at 10,000 rules)."""
    out = []
    slot_lines: dict[tuple[str, ...], str] = {}
    written: dict[tuple, str] = {}  # a group, first or not, as written
    for row in rows:
        out.append(f"\t[{row.id}] = {{\n")
        groups = iter(row.groups)
        word, _, why = next(groups)
        text = written.get((word, why))
        if text is None:
            text = written[word, why] = \
                f"\t\t[0 ... FPOL_NSLOTS - 1] = 0x{word:08x}, /* {_ccomment(why)}: the other atoms */\n"
        out.append(text)
        for word, atoms, why in groups:
            text = written.get((word, atoms, why))
            if text is None:
                lines = slot_lines.get(atoms)
                if lines is None:
                    lines = slot_lines[atoms] = _slot_lines(atoms)
                text = written[word, atoms, why] = \
                    f"\t\t/* {_ccomment(why)} */\n" + lines.replace("{word}", f"0x{word:08x}")
            out.append(text)
        out.append("\t},\n")
    return "".join(out)


def _slot_lines(atoms: tuple[str, ...]) -> str:
    """The lines setting `atoms`' slots, four to a line, to `{word}` (which the slots'
    names, upper case, never hold)."""
    return "".join(
        "\t\t" + " ".join(f"[FPOL_SLOT_{_cname(a)}] = {{word}}," for a in atoms[i:i + 4])
        + "\n" for i in range(0, len(atoms), 4))


def _literal_entries(table, said: _Said) -> str:
    return "".join([
        f"\t[{i}] = {{ {e.cls}, 0x{e.hash:08x}, {e.offset}, {e.length}, {1 if e.inherit_ok else 0}, "
        f"{e.child} }}, /* class {e.cls}: \"{said[e.name]}\" -> class {e.child} */\n"
        if e else f"\t[{i}] = {{ 0xffffffff, 0, 0, 0, 0, 0 }},\n"
        for i, e in enumerate(table)])


def _instance_names(instances) -> str:
    return "".join([f'\t"{i.name}",\n' for i in instances])


def _members(programs) -> str:
    """An instance's member lines: each program in its member (its hook)."""
    return "".join([f"\t.{p.hook} = (void *){p.name},\n" for p in programs])


def _instance_entries(instances) -> str:
    return "".join([
        f"\n/* class {i.cls}: e.g. {_ccomment(i.example)} */\nSEC(\".struct_ops\")\n"
        f"struct fuse_ops {_cident(i.name)} = {{\n{_members(i.programs)}"
        f'\t.name = "{i.name}",\n}};\n'
        for i in instances])


# Programs that are one line: a stub macro of templates/programs.j2, with its arguments.
_STUB_ARGS = {"FPOL_STUB_OBJECT": True, "FPOL_STUB_CREATE": True, "FPOL_STUB_REMOVE": False}


def _stub_name(p) -> str:
    """The stub macro a program instantiates, or "" when it is written out in full."""
    if p.kind == "object":
        return {"open": "FPOL_STUB_OPEN", "access": "FPOL_STUB_ACCESS"}.get(p.op, "FPOL_STUB_OBJECT")
    if p.kind == "create":
        return "FPOL_STUB_CREATE_OPEN" if p.op == "create" else "FPOL_STUB_CREATE"
    if p.kind == "rename":
        return "FPOL_STUB_RENAME2" if p.hook == "rename2_prefilter" else "FPOL_STUB_RENAME"
    if p.kind in ("fsync", "lookup", "lookup_post", "remove", "link", "cfr"):
        return f"FPOL_STUB_{p.kind.upper()}"
    return ""


def _stub_args(p, stub: str) -> str:
    """The stub's arguments after the program's name and class."""
    args = ""
    if stub == "FPOL_STUB_FSYNC":  # one program per member: the member is an argument
        args += f", {p.hook}"
    if stub in _STUB_ARGS:
        args += f", {p.hook}, FPOL_SLOT_{_cname(p.op)}"
        if _STUB_ARGS[stub] and p.params:
            args += f", {p.params}"
    return args


def _program_entries(programs, model: Model, macros) -> tuple[str, set[str]]:
    """A line per stub program; programs that are not stubs written out by the template,
    with a blank line either side (one between two of them). With the stub macros used.

    Class numbers are written from a table of their text (str() of each number in the
    comments' class lists, about 450,000 at 10,000 rules, cost more), and a stub and its
    arguments once per kind, member, op and parameters."""
    out = []
    numbers = [str(c) for c in range(len(model.classes))]
    stubs: dict[tuple[str, str, str, str], tuple[str, str]] = {}
    apart = False  # the last program ended with a blank line
    for p in programs:
        key = (p.kind, p.hook, p.op, p.params)
        stub_args = stubs.get(key)
        if stub_args is None:
            stub = _stub_name(p)
            stub_args = stubs[key] = (stub, _stub_args(p, stub) if stub else "")
        stub, args = stub_args
        if len(p.classes) > 1 and stub:
            out.append(f"{stub}({p.name}, {numbers[p.cls]}{args})  /* also classes "
                       f"{', '.join(map(numbers.__getitem__, p.classes[1:]))} */\n")
        elif stub:
            out.append(f"{stub}({p.name}, {numbers[p.cls]}{args})\n")
        else:
            out.append(("" if apart else "\n") + macros.program(p, model) + "\n\n")
        apart = not stub
    return "".join(out), {stub for stub, _ in stubs.values() if stub}


@functools.lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fpol.templates", "."),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(cname=_cname, ccomment=_ccomment, cident=_cident, chunks=_chunks,
                       glob_body=_glob_body, describe=_describe,
                       class_glob_entries=_class_glob_entries)
    # The definitions of the stub macros used, a macro of programs.j2 (mypy sees only
    # jinja2's TemplateModule).
    env.filters["stub_macros"] = env.get_template("programs.j2").module.stub_macros  # type: ignore[attr-defined]
    return env


# The big tables, written by the helpers above, reach the templates as values (their
# names in the templates are these keys). Each has no run of blank lines inside
# (tests/test_render.py checks them for every golden policy), so the squeeze of what
# template control lines leave behind skips them: scanning all ~100 MB of C cost a
# quarter of a second at 10,000 rules.

def _logic_tables(model: Model) -> dict[str, str]:
    said = _Said()
    return {"rule_entries": _rule_entries(model),
            "class_entries": _class_entries(model.classes),
            "row_entries": _row_entries(model.rows),
            "literal_entries": _literal_entries(model.literal_table, said),
            "glob_mask_entries": _glob_mask_entries(model.glob_masks, said)}


def _struct_ops_tables(model: Model) -> tuple[dict[str, str], set[str]]:
    """The tables, and the stub macros the programs use."""
    macros = _environment().get_template("programs.j2").module
    first: dict[str, object] = {}  # each instance name once, its first instance
    for i in model.instances:
        first.setdefault(i.name, i)
    programs, stubs_used = _program_entries(model.programs, model, macros)
    return {"instance_names": _instance_names(model.instances),
            "program_entries": programs,
            "instance_entries": _instance_entries(first.values())}, stubs_used


def _render(name: str, context: dict, tables: dict[str, str]) -> str:
    """Template `name` rendered with `context` and `tables` (clean text, see above)."""
    chunks = _environment().get_template(name).generate(**context, **tables)
    return _squeeze_around(chunks, list(tables.values()))


def _logic(model: Model, context: dict) -> str:
    """The decision logic both objects include, rendered once per model."""
    return derived(model, "_logic_c",
                   lambda: _render("logic.h.j2", context, _logic_tables(model)))


@no_collections()
def render(model: Model, which: str = "struct_ops") -> str:
    """The C source of the struct_ops object (`struct_ops`) or the check object (`check`)."""
    name = {"struct_ops": "policy.bpf.c.j2", "check": "check.bpf.c.j2"}[which]
    context = dict(vars(model))
    if which == "struct_ops":  # planned now if not before (the check object needs no plan)
        context["programs"], context["instances"] = model.programs, model.instances
    context["model"] = model
    context["word"] = C_MACROS
    context["layout"] = C_LAYOUT
    tables = {"logic": _logic(model, context)}  # squeezed: clean as well
    if which == "struct_ops":
        struct_ops, context["stubs_used"] = _struct_ops_tables(model)
        tables.update(struct_ops)
    return _render(name, context, tables)


def _squeeze_blank_lines(text: str) -> str:
    """Every run of blank lines as one (template control lines leave runs behind): each
    pass halves the runs, and str.replace is far quicker than a regex."""
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text


def _squeeze_around(chunks: Iterable[str], clean: list[str]) -> str:
    """The chunks joined, every run of blank lines as one, as _squeeze_blank_lines would
    leave them; chunks that are one of `clean` (no run of blank lines inside) are not
    searched, only the runs where they meet the text around them.

    Squeezing turns each run of three or more newlines into two. The text between clean
    chunks is squeezed whole; then a run that crosses a join is cut to two."""
    pieces: list[str] = []
    between: list[str] = []
    ids = {id(c) for c in clean}  # which chunks are clean, by identity (clean outlives this)
    for chunk in chunks:
        if id(chunk) in ids:
            pieces.append(_squeeze_blank_lines("".join(between)))
            pieces.append(chunk)
            between = []
        else:
            between.append(chunk)
    pieces.append(_squeeze_blank_lines("".join(between)))
    out: list[str] = []
    tail = 0  # newlines the text so far ends with: at most two
    for piece in pieces:
        head = piece[:2]  # a squeezed piece starts with at most two newlines
        lead = len(head) - len(head.lstrip("\n"))
        if lead and tail + lead > 2:
            piece = piece[tail + lead - 2:]
        if not piece:
            continue
        out.append(piece)
        end = piece[-2:]
        trailing = len(end) - len(end.rstrip("\n"))
        tail = tail + trailing if trailing == len(piece) else trailing
    return "".join(out)
