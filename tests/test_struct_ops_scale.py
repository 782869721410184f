"""The struct_ops object of a realistic policy (issue 13), built in parts and linked
(compiler/clang.py: clang's time grows with the square of the programs in one unit), opens
in libbpf, fails to load only for want of fuse-bpf, and every instance points each member at
the program the compiler chose for it.

The policy is the realistic family at 150 rules (benchmarks/policies.py): 355 instances and
about 2,300 programs, built as three parts of at most 800 programs and a core.
benchmarks/SCALE.md has the figures at 1,000, 3,000 and 10,000 rules.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys

from fpol.compiler.driver import check

from kernel_support import require_bpf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
from policies import realistic_text  # noqa: E402

FUSE_BPF_MISSING = ("fuse_ops is not found in kernel BTF",
                    "'bpf_fuse_get_ro_dynptr': not found in kernel",
                    "'bpf_fuse_get_rw_dynptr': not found in kernel",
                    "'bpf_fuse_return_len': not found in kernel")


def _sections(data: bytes):
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = secs[shstrndx]

    def name(off: int) -> str:
        start = names[4] + off
        return data[start:data.index(b"\0", start)].decode()

    return [(name(s[0]), s) for s in secs]


def struct_ops_members(path: str) -> dict[str, dict[int, str]]:
    """Per `.struct_ops` variable of an ELF object: member offset -> program symbol."""
    data = open(path, "rb").read()
    secs = _sections(data)
    index = {n: i for i, (n, _) in enumerate(secs)}
    symtab = next(s for n, s in secs if s[1] == 2)
    strtab = secs[symtab[6]][1]
    syms = []
    for k in range(symtab[5] // 24):
        st_name, info, other, shndx, value, size = struct.unpack_from(
            "<IBBHQQ", data, symtab[4] + 24 * k)
        start = strtab[4] + st_name
        syms.append((data[start:data.index(b"\0", start)].decode(), info & 0xF, shndx, value, size))
    ops = index[".struct_ops"]
    variables = [(v, sz, n) for n, kind, shndx, v, sz in syms if shndx == ops and kind == 1]
    rel = next(s for n, s in secs if s[1] == 9 and s[7] == ops)
    out: dict[str, dict[int, str]] = {n: {} for _, _, n in variables}
    for k in range(rel[5] // 16):
        offset, info = struct.unpack_from("<QQ", data, rel[4] + 16 * k)
        target = syms[info >> 32][0]
        for v, sz, n in variables:
            if v <= offset < v + sz:
                out[n][offset - v] = target
    return out


def fuse_ops_offsets(path: str) -> dict[str, int]:
    """Member name -> byte offset in `struct fuse_ops`, from the object's BTF."""
    from fpol.compiler.clang import find_bpftool

    dump = subprocess.run([find_bpftool(), "btf", "dump", "file", path], check=True,
                          capture_output=True, text=True).stdout
    block = re.search(r"STRUCT 'fuse_ops' size=\d+ vlen=\d+\n((?:\t.*\n)+)", dump).group(1)
    return {m.group(1): int(m.group(2)) // 8
            for m in re.finditer(r"'(\w+)' type_id=\d+ bits_offset=(\d+)", block)}


def test_realistic_struct_ops_object_builds_in_parts_opens_and_is_wired(tmp_path, monkeypatch):
    require_bpf()
    from fpol.compiler import clang
    from fpol.compiler.lower import lower
    from fpol.compiler.render import render
    from fpol.runtime import libbpf
    from fpol.runtime.probe import fuse_ops_abi

    checked = check(realistic_text(150).encode(), "r150.fpol").require()
    model = lower(checked.classes, source_name="r150.fpol")
    source = render(model, "struct_ops")
    monkeypatch.setattr(clang, "PART_PROGRAMS", 800)
    parts = clang.split_programs(source)
    assert parts is not None and len(parts.units) >= 3
    assert set(parts.programs) == {p.name for p in model.programs}
    path = str(tmp_path / "r150.bpf.o")
    clang.compile_c(source, path, "r150")

    # Every instance, and each of its members names the program the model chose (a program
    # that several parts need is repeated in each, with a suffix `_pN`).
    instances = {}
    for i in model.instances:
        instances.setdefault(i.name, i.members)
    wired = struct_ops_members(path)
    assert set(wired) == set(instances)
    offsets = fuse_ops_offsets(path)
    for name, members in instances.items():
        got = {off: re.sub(r"_p\d+$", "", prog) for off, prog in wired[name].items()}
        assert got == {offsets[m]: prog for m, prog in members}, name

    try:
        obj = libbpf.BpfObject(path)
    except libbpf.LibbpfError as e:
        raise AssertionError(f"libbpf refused the linked object at open:\n{e.log[-3000:]}")
    with obj:
        assert {m.name for m in obj.maps()} >= set(instances)
        try:
            obj.load()
            loaded = True
        except libbpf.LibbpfError as e:
            loaded, log = False, e.log
    if fuse_ops_abi() == model.abi:
        assert loaded
    else:
        assert not loaded and any(s in log for s in FUSE_BPF_MISSING), log[-3000:]


def test_declarations_keep_types_and_drop_definitions():
    from fpol.compiler.clang import declarations

    text = ('#define X 1\nstruct s { int a; };\nconst int t[2] = { 1, 2 };\n'
            'static __always_inline int f(int x) { return t[x]; }\n'
            '__noinline int g(int x)\n{\n\tif (x) { return 1; }\n\treturn "}"[0];\n}\n'
            'struct { int type; } m SEC(".maps");\nchar LICENSE[] SEC("license") = "GPL";\n'
            'extern void k(int) __ksym;\n')
    out = declarations(text)
    assert "#define X 1" in out and "struct s { int a; };" in out
    assert "extern const int t[2];" in out and "{ 1, 2 }" not in out
    assert "static __always_inline int f(int x) { return t[x]; }" in out
    assert "__noinline int g(int x);" in out and "return 1" not in out
    assert 'extern struct { int type; } m SEC(".maps");' in out
    assert "LICENSE" not in out and "extern void k(int) __ksym;" in out
