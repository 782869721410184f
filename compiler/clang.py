"""The clang driver: generated C -> BPF object.

Finds clang ($CLANG first), builds with `-O2 -g -target bpf -mcpu=v3` and the
libbpf headers, and turns a clang failure into an error that shows the
generated line and the policy rule whose code it belongs to.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Optional
from .errors import EnvironmentProblem, FpolError

CANDIDATES = ("clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14")
CFLAGS = ("-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Wno-unused-function",
          "-Wno-unused-variable",
          # Decision rows are filled with one word, then the exceptions are named.
          "-Wno-initializer-overrides")
_MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
              "arm64": "aarch64-linux-gnu", "riscv64": "riscv64-linux-gnu",
              "ppc64le": "powerpc64le-linux-gnu", "s390x": "s390x-linux-gnu"}


class ToolMissing(EnvironmentProblem):
    """A tool this machine lacks (exit code 3)."""


@dataclass
class CompileFailure(FpolError):
    message: str
    output: str
    c_line: Optional[int] = None
    c_text: Optional[str] = None
    rule: Optional[str] = None

    def __str__(self) -> str:
        out = [self.message]
        if self.c_line is not None:
            out.append(f"  generated line {self.c_line}: {self.c_text}")
        if self.rule:
            out.append(f"  generated for: {self.rule}")
        if self.output.strip():
            out.append("  clang said:")
            out.extend("    " + line for line in self.output.strip().splitlines()[:20])
        return "\n".join(out)


def find_clang() -> str:
    env = os.environ.get("CLANG")
    if env:
        path = shutil.which(env)
        if not path:
            raise ToolMissing(f"$CLANG is `{env}`, which is not an executable on PATH")
        return path
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise ToolMissing("clang not found; install it (Debian: apt-get install clang libbpf-dev) "
                      "or set $CLANG")


def clang_version(clang: Optional[str] = None) -> str:
    out = subprocess.run([clang or find_clang(), "--version"], capture_output=True, text=True)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    m = re.search(r"version (\S+)", first)
    return m.group(1) if m else first


def include_flags() -> list[str]:
    """`asm/types.h` lives in the multiarch include dir; libbpf's headers in /usr/include."""
    flags = []
    multiarch = _MULTIARCH.get(platform.machine())
    if multiarch and os.path.isdir(f"/usr/include/{multiarch}"):
        flags.append(f"-I/usr/include/{multiarch}")
    extra = os.environ.get("FPOL_BPF_INCLUDE")
    if extra:
        flags.extend(f"-I{d}" for d in extra.split(":") if d)
    if not os.path.exists("/usr/include/bpf/bpf_helpers.h") and not extra:
        raise ToolMissing("libbpf headers (bpf/bpf_helpers.h) not found; install libbpf-dev "
                          "or point $FPOL_BPF_INCLUDE at them")
    return flags


def compile_c(source: str, output: str, name: str = "policy") -> None:
    """Build `source` into the BPF object `output`; raises CompileFailure or ToolMissing.

    A struct_ops source with many programs is built in parts and linked (_compile_parts):
    clang's BTF string table costs time quadratic in the distinct names of one unit."""
    parts = split_programs(source)
    if parts is not None:
        _compile_parts(parts, output, name)
        return
    _compile_one(source, output, name)


def _compile_one(source: str, output: str, name: str) -> None:
    clang = find_clang()
    with tempfile.TemporaryDirectory(prefix="fpol-") as tmp:
        c_path = os.path.join(tmp, f"{name}.bpf.c")
        with open(c_path, "w", encoding="utf-8") as f:
            f.write(source)
        cmd = [clang, *CFLAGS, *include_flags(), "-c", c_path, "-o", output]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode < 0:
        raise _killed(-proc.returncode, proc.stderr or proc.stdout, len(source))
    if proc.returncode != 0:
        raise _failure(source, proc.stderr or proc.stdout, c_path, proc.returncode)


def _killed(sig: int, output: str, size: int) -> CompileFailure:
    """clang ended by a signal: say which, and what to do."""
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    if sig == signal.SIGKILL:
        why = (f"clang was killed by {name} while building {size:,} bytes of generated C: most "
               "likely out of memory (the kernel's OOM killer, or a memory limit such as "
               "`ulimit -v` or a cgroup, sends SIGKILL). Free memory or raise the limit, or "
               "split the policy into smaller ones")
    else:
        why = f"clang was killed by {name} while building {size:,} bytes of generated C"
    return CompileFailure(why, output)


_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?:fatal )?error: (?P<msg>.*)$", re.M)
_RULE_COMMENT = re.compile(r"/\* .*?(\S+\.fpol:\d+ [^*]*?) \*/|/\* rule \d+: (\S+:\d+ [^*]*?) \*/")


def _failure(source: str, output: str, c_path: str, status: int = 1) -> CompileFailure:
    lines = source.splitlines()
    for m in _DIAG.finditer(output):
        if not m.group("file").endswith(os.path.basename(c_path)):
            continue
        n = int(m.group("line"))
        text = lines[n - 1].strip() if 0 < n <= len(lines) else ""
        rule = None
        for back in range(n - 1, max(-1, n - 400), -1):
            found = _RULE_COMMENT.search(lines[back]) if back < len(lines) else None
            if found:
                rule = found.group(1) or found.group(2)
                break
        return CompileFailure(f"clang rejected the generated C: {m.group('msg')}", output,
                              n, text, rule)
    killed = re.search(r"\bKilled\b", output)
    if killed:  # the driver lives, its compiler process (cc1) was killed
        out = _killed(signal.SIGKILL, output, len(source))
        out.message = out.message.replace("clang was killed", "clang's compiler process was killed", 1)
        return out
    first = next((line.strip() for line in output.splitlines()
                  if re.search(r"error|fatal|LLVM ERROR|terminate|Killed|out of memory", line, re.I)),
                 next((line.strip() for line in output.splitlines() if line.strip()), ""))
    if first and re.search(r"out of memory|Allocation failed|bad_alloc", output):
        return CompileFailure(f"clang failed (exit status {status}): {first}: it ran out of memory "
                              f"building {len(source):,} bytes of generated C. Free memory or raise "
                              "the limit (`ulimit -v`, cgroup), or split the policy into smaller "
                              "ones", output)
    if first:
        return CompileFailure(f"clang failed (exit status {status}): {first}", output)
    return CompileFailure(f"clang failed (exit status {status}) and printed nothing", output)



# --- large struct_ops objects, built in parts ------------------------------------------
#
# clang 14's BPF backend adds every string of the object's BTF (each program's name, each
# instance's, each source line a program's line info names) by a linear search of the
# strings before it, so one unit of N programs costs time quadratic in N: 2,000 stubs build
# in ~2 s, 8,000 in ~26 s, and 19,000 (1,000 realistic rules before sharing) did not finish
# in 10 minutes. So a source with more than PART_PROGRAMS programs is built as several units
# of at most that many, compiled in parallel with -g as ever, and joined by libbpf's static
# linker (`bpftool gen object`), which merges their BTF and resolves the calls:
# - the first unit is the source up to the programs (the decision logic, its tables and
#   maps, the helpers, the stub macros), with its share of the programs and instances;
# - every other unit has the same preamble as declarations only (tables, maps and global
#   functions `extern`, static inline helpers and macros as they are), its programs (a
#   program several units need is repeated in each, renamed: a struct_ops member must name a
#   program of its own object file), and its instances;
# - instances are `static` in every unit: the linker's symbol lookup is linear too, so only
#   the programs are global symbols.
# The markers below come from templates/policy.bpf.c.j2.

PART_PROGRAMS = 1500
_PROGRAMS_MARK = " * fpol:programs"
_INSTANCES_MARK = "/* fpol:instances"
_INSTANCE = re.compile(r'(?:/\* class [^\n]*\*/\n)?SEC\("\.struct_ops"\)\nstruct fuse_ops (\w+) = \{\n(.*?)\n\};\n',
                       re.S)
_MEMBER = re.compile(r"\(void \*\)(\w+),")


@dataclass
class Parts:
    preamble: str  # the source up to the programs
    programs: dict  # name -> its text (a stub line, or a program written out)
    units: list  # per unit: (program names, instance texts)
    first_unit: dict  # program name -> the first unit that has it (others rename it)


def _program_items(text: str) -> dict:
    """The programs section: stub lines, and programs written out (ending in a line `}`)."""
    out: dict = {}
    block: list[str] = []
    for line in text.split("\n"):
        if not block:
            if not line.strip():
                continue
            m = re.match(r"FPOL_STUB_\w+\((\w+),", line)
            if m:
                out[m.group(1)] = line
                continue
        block.append(line)
        if line == "}":
            text_ = "\n".join(block)
            m = re.search(r"BPF_PROG\((\w+)", text_)
            if not m:
                raise ValueError("a program without a name in the generated source")
            out[m.group(1)] = text_
            block = []
    if any(line.strip() for line in block):
        raise ValueError("an unfinished program in the generated source")
    return out


def split_programs(source: str, limit: Optional[int] = None) -> Optional[Parts]:
    """The units a struct_ops source is built as, or None to build it whole."""
    limit = limit or PART_PROGRAMS
    start = source.find(_PROGRAMS_MARK)
    middle = source.find(_INSTANCES_MARK)
    if start < 0 or middle < 0:
        return None
    start = source.index("\n", source.index("*/", start)) + 1
    if source.count("\n", start, middle) < limit:  # at most one line a program
        return None
    programs = _program_items(source[start:middle])
    if len(programs) <= limit:
        return None
    blocks = [(m.group(0), _MEMBER.findall(m.group(2))) for m in _INSTANCE.finditer(source, middle)]
    # Instances that use the same shared programs go to the same part, so fewer programs are
    # repeated (3,000 realistic rules: 30% repeats in class order, 11% so).
    users: dict = {}
    for _, used in blocks:
        for p in set(used):
            users[p] = users.get(p, 0) + 1
    blocks.sort(key=lambda b: sorted((-users[p], p) for p in set(b[1]) if users[p] > 1))
    units: list = []
    names: list = []
    seen: set = set()
    texts: list = []
    for text, used in blocks:
        fresh = [p for p in used if p not in seen]
        if names and len(seen) + len(fresh) > limit:
            units.append((names, texts))
            names, seen, texts = [], set(), []
            fresh = list(dict.fromkeys(used))
        for p in fresh:
            if p not in seen:
                seen.add(p)
                names.append(p)
        texts.append(text)
    if texts:
        units.append((names, texts))
    used_anywhere = {p for unit_names, _ in units for p in unit_names}
    units[0][0].extend(p for p in programs if p not in used_anywhere)
    preamble = source[:source.rindex("/*", 0, source.index(_PROGRAMS_MARK))]
    first_unit: dict = {}
    for k, (unit_names, _) in enumerate(units):
        for p in unit_names:
            first_unit.setdefault(p, k)
    return Parts(preamble, programs, units, first_unit)


_KSYM = re.compile(r"extern\s[^;]*?\b(\w+)\s*\(([^;]*)\)\s*__ksym\s*;")


def _core_source(parts: Parts) -> str:
    """The first unit: the preamble (logic, tables, maps, helpers), no program. libbpf 1.1's
    linker cannot merge one kfunc declared `__ksym` in two objects ("failed to resolve size
    of underlying type"), so only this unit declares them so, and a function no program
    calls (libbpf loads only what programs call) makes clang describe every kfunc here; the
    other units declare them as plain externs, which the linker joins to these."""
    calls = []
    for m in _KSYM.finditer(parts.preamble):
        args = ", ".join("0" for a in m.group(2).split(",") if a.strip() and a.strip() != "void")
        calls.append(f"\t{m.group(1)}({args});\n")
    keeper = ("\n/* Never called: it makes clang describe every kfunc in this part "
              "(compiler/clang.py). */\n__noinline int fpol_kfuncs(void)\n{\n"
              + "".join(calls) + "\treturn 0;\n}\n") if calls else ""
    return parts.preamble + keeper


def _unit_source(parts: Parts, k: int) -> str:
    """Unit k (from 1): the preamble as declarations, its programs and its instances."""
    if k == 0:
        return _core_source(parts)
    names, instances = parts.units[k - 1]
    out = [_KSYM.sub(lambda m: m.group(0).replace("__ksym", ""), declarations(parts.preamble))]
    out.append(f"\n/* Part {k} of {len(parts.units)}: {len(names)} programs, "
               f"{len(instances)} instances. */\n")
    rename = {}
    for p in names:
        text = parts.programs[p]
        if parts.first_unit[p] != k - 1:
            rename[p] = f"{p}_p{k}"
            text = re.sub(rf"\b{p}\b", rename[p], text, count=1)
        out.append(text + "\n")
    for text in instances:
        text = text.replace('SEC(".struct_ops")\nstruct fuse_ops',
                            'SEC(".struct_ops")\nstatic struct fuse_ops', 1)
        if rename:
            text = _MEMBER.sub(lambda m: f"(void *){rename.get(m.group(1), m.group(1))},", text)
        out.append(text)
    return "".join(out)


def _compile_parts(parts: Parts, output: str, name: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    linker = find_bpftool()
    with tempfile.TemporaryDirectory(prefix="fpol-parts-") as tmp:
        objects = [os.path.join(tmp, f"{name}.part{k}.o") for k in range(len(parts.units) + 1)]

        def build(k: int) -> None:
            try:
                _compile_one(_unit_source(parts, k), objects[k], f"{name}.part{k}")
            except CompileFailure as e:
                # The generated line is the part's (the core's lines are the source's own).
                e.message = (f"{e.message} (in part {k} of {len(objects) - 1} of the "
                             "struct_ops object, built in parts: compiler/clang.py)")
                raise

        workers = max(1, min(len(objects), os.cpu_count() or 1, 8))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for f in [pool.submit(build, k) for k in range(len(objects))]:
                f.result()
        proc = subprocess.run([linker, "gen", "object", output, *objects],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileFailure(f"linking the {len(objects)} parts of the struct_ops object "
                                 f"failed (bpftool gen object, exit status {proc.returncode})",
                                 proc.stderr or proc.stdout)


def find_bpftool() -> str:
    env = os.environ.get("BPFTOOL")
    for cand in ([env] if env else []) + ["bpftool", "/usr/sbin/bpftool", "/sbin/bpftool"]:
        path = shutil.which(cand)
        if path:
            return path
    raise ToolMissing("bpftool not found: a struct_ops object of more than "
                      f"{PART_PROGRAMS} programs is built in parts and linked with "
                      "`bpftool gen object`; install it (Debian: apt-get install bpftool) "
                      "or set $BPFTOOL")


def declarations(text: str) -> str:
    """C text with its definitions turned into declarations: global functions become
    prototypes, initialised global variables and `.maps` definitions `extern`; macros,
    types, static functions and declarations stay; the license goes (one unit has it)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        j = _skip_space(text, i)
        if j >= n:
            break
        if text[j] == "#":
            end = j
            while True:
                nl = text.find("\n", end)
                if nl < 0:
                    nl = n
                if text[nl - 1:nl] == "\\" and nl < n:
                    end = nl + 1
                    continue
                break
            out.append(text[j:nl] + "\n")
            i = nl + 1
            continue
        end, header, is_function = _item(text, j)
        item = text[j:end]
        i = end
        if 'SEC("license")' in item:
            continue
        if is_function:
            if re.match(r"static\b", header.strip()):
                out.append(item + "\n")
            else:
                out.append(header.strip() + ";\n")
            continue
        eq = _top_level(item, "=")
        if eq is not None and not re.match(r"static\b", item):
            out.append("extern " + item[:eq].strip() + ";\n")
        elif re.match(r"struct\s*\{", item) and 'SEC(".maps")' in item:
            out.append("extern " + item + "\n")
        else:
            out.append(item + "\n")
    return "".join(out)


def _skip_space(text: str, i: int) -> int:
    n = len(text)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("/*", i):
            i = text.index("*/", i + 2) + 2
        elif text.startswith("//", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        else:
            break
    return i


def _item(text: str, start: int):
    """One top-level C item from `start`: (its end, the text before its first `{`, whether it
    is a function definition: a header ending in `)` and a body)."""
    depth = 0
    header = None
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if text.startswith("/*", i):
            i = text.index("*/", i + 2) + 2
            continue
        if text.startswith("//", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        if ch in "\"'":
            i += 1
            while text[i] != ch:
                i += 2 if text[i] == "\\" else 1
        elif ch == "{":
            if depth == 0 and header is None:
                header = text[start:i]
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0 and header is not None:
                head = re.sub(r"/\*.*?\*/|//[^\n]*", "", header, flags=re.S).strip()
                if head.endswith(")") and _top_level(head, "=") is None:
                    return i + 1, head, True
        elif ch == ";" and depth == 0:
            return i + 1, header or "", False
        i += 1
    raise ValueError("unfinished C item in the generated source")


def _top_level(item: str, char: str) -> Optional[int]:
    """Where `char` first occurs outside braces, brackets, parentheses and strings."""
    depth = 0
    i, n = 0, len(item)
    while i < n:
        ch = item[i]
        if ch in "\"'":
            i += 1
            while item[i] != ch:
                i += 2 if item[i] == "\\" else 1
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        elif ch == char and depth == 0:
            return i
        i += 1
    return None
