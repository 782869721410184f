"""The generated C builds with real clang, for both objects and both ABIs, and the
objects have the shape the loader and the kernel expect.

Every golden-producing policy (tests/policyset.py) is compiled once per (ABI, object)
by a module-scoped fixture, in parallel, through compiler.clang.compile_c. Objects are
kept in pytest's cache directory under a key made of the C source, the clang binary and
version, the flags and the libbpf headers, so an unchanged compiler does not rebuild
them (FPOL_TEST_NO_OBJECT_CACHE=1 rebuilds everything).

The objects are inspected with a small ELF section-header reader (below), bpftool's
BTF dump and readelf:

* struct_ops object: a `.struct_ops` section; BTF `STRUCT 'fuse_ops'`, with its
  `default_filter` member on abi v4 and without it on v3; one VAR per class in
  DATASEC '.struct_ops', typed `struct fuse_ops` and named POLICY_<class> (1-14
  characters of [A-Za-z0-9_.]);
* check object: a `syscall` section and no `.struct_ops`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fpol.compiler import clang as clangmod
from fpol.compiler.clang import CompileFailure, ToolMissing, compile_c
from policyset import golden_policies

POLICIES = golden_policies()
ABIS = ("v3", "v4")
WHICH = ("struct_ops", "check")
INSTANCE_NAME = re.compile(r"[A-Za-z0-9_.]{1,14}")


# --- a tiny ELF reader ------------------------------------------------------------------

EM_BPF = 247
SHT_PROGBITS = 1


def elf_sections(path: "str | Path") -> dict[str, dict]:
    """Section name -> {type, flags, size} from the ELF64 section headers."""
    data = Path(path).read_bytes()
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    assert data[4] == 2, "not ELFCLASS64"
    endian = "<" if data[5] == 1 else ">"
    (e_type, e_machine, _version, _entry, _phoff, e_shoff, _flags, _ehsize, _phentsize,
     _phnum, e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from(endian + "HHIQQQIHHHHHH", data, 16)
    assert e_type == 1, "not a relocatable object (ET_REL)"
    assert e_machine == EM_BPF, f"e_machine {e_machine}, not EM_BPF"
    assert e_shentsize == 64
    headers = [struct.unpack_from(endian + "IIQQQQIIQQ", data, e_shoff + i * e_shentsize)
               for i in range(e_shnum)]
    strtab_off, strtab_size = headers[e_shstrndx][4], headers[e_shstrndx][5]
    strtab = data[strtab_off:strtab_off + strtab_size]
    out = {}
    for sh_name, sh_type, sh_flags, _addr, _off, sh_size, *_ in headers[1:]:
        name = strtab[sh_name:strtab.index(b"\0", sh_name)].decode()
        out[name] = {"type": sh_type, "flags": sh_flags, "size": sh_size}
    return out


# --- tools ------------------------------------------------------------------------------

def _need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} not found (install {'bpftool' if tool == 'bpftool' else 'binutils'})")
    return path


def btf_types(path: "str | Path") -> list[dict]:
    proc = subprocess.run([_need("bpftool"), "-j", "btf", "dump", "file", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["types"]


def _cache_key_base() -> str:
    clang = clangmod.find_clang()
    parts = [clang, clangmod.clang_version(clang), " ".join(clangmod.CFLAGS),
             " ".join(clangmod.include_flags())]
    for d in ("/usr/include/bpf", "/usr/include/linux"):
        for name in ("bpf_helpers.h", "bpf_tracing.h", "bpf_core_read.h", "bpf.h", "types.h"):
            p = Path(d) / name
            if p.exists():
                st = p.stat()
                parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def objects(request) -> dict:
    """(policy name, abi, which) -> path of the built object."""
    try:
        base = _cache_key_base()
    except ToolMissing as e:
        pytest.skip(f"clang or libbpf headers missing: {e}")
    # pytest's cache (absent under `-p no:cacheprovider`) keeps objects between runs.
    use_cache = os.environ.get("FPOL_TEST_NO_OBJECT_CACHE") != "1" and \
        getattr(request.config, "cache", None) is not None
    cache_dir = Path(request.config.cache.mkdir("fpol-bpf-objects")) if use_cache \
        else Path(tempfile.mkdtemp(prefix="fpol-objects-"))
    jobs = []
    for p in POLICIES:
        for abi in ABIS:
            for which in WHICH:
                source = p.c(which, abi)
                key = hashlib.sha256((base + "\n" + source).encode()).hexdigest()[:32]
                jobs.append(((p.name, abi, which), source, cache_dir / f"{key}.o",
                             p.checked().policy.name + ("" if which == "struct_ops" else ".check")))

    def build(job):
        ident, source, out, name = job
        if out.exists():
            return ident, out, None
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            compile_c(source, str(tmp), name)
        except CompileFailure as e:
            return ident, None, e
        os.replace(tmp, out)
        return ident, out, None

    jobs.sort(key=lambda j: -len(j[1]))  # longest first: better packing
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(build, jobs))
    failures = {ident: err for ident, _, err in results if err}
    built = {ident: out for ident, out, err in results if not err}
    built["__failures__"] = failures
    return built


def _obj(objects, policy, abi, which) -> Path:
    ident = (policy.name, abi, which)
    failure = objects["__failures__"].get(ident)
    assert failure is None, f"clang failed for {ident}:\n{failure}"
    return objects[ident]


# --- the objects ------------------------------------------------------------------------

@pytest.mark.parametrize("abi", ABIS)
@pytest.mark.parametrize("policy", POLICIES, ids=[p.name for p in POLICIES])
def test_struct_ops_object(objects, policy, abi):
    path = _obj(objects, policy, abi, "struct_ops")
    sections = elf_sections(path)
    assert ".struct_ops" in sections, sorted(sections)
    assert sections[".struct_ops"]["type"] == SHT_PROGBITS and sections[".struct_ops"]["size"] > 0
    assert "syscall" not in sections
    decides = any(d.kind != "allow" or d.audit
                  for c in policy.checked().classes.classes for d in c.table)
    if decides:  # an allow-everything policy needs no hooks (on v3 not even default_filter)
        assert any(name.startswith("struct_ops/") for name in sections), "no struct_ops programs"
    assert "license" in sections and ".BTF" in sections

    types = btf_types(path)
    by_id = {t["id"]: t for t in types}
    fuse_ops = [t for t in types if t["kind"] == "STRUCT" and t["name"] == "fuse_ops"]
    assert len(fuse_ops) == 1, "BTF has no (or several) STRUCT 'fuse_ops'"
    members = [m["name"] for m in fuse_ops[0]["members"]]
    if abi == "v4":
        assert "default_filter" in members
    else:
        assert "default_filter" not in members
    assert "lookup_prefilter" in members and "open_prefilter" in members

    datasec = [t for t in types if t["kind"] == "DATASEC" and t["name"] == ".struct_ops"]
    assert len(datasec) == 1
    variables = [by_id[v["type_id"]] for v in datasec[0]["vars"]]
    checked = policy.checked()
    # One instance per class, except that classes that behave alike share one (named after
    # the first of them; the root's is <policy>_0): exactly the model's instances.
    from fpol.compiler.lower import lower

    shared = {i.name for i in lower(checked.classes, abi=abi).instances}
    assert len(variables) == len(shared) <= len(checked.classes.classes)
    names = [v["name"] for v in variables]
    for v in variables:
        assert v["kind"] == "VAR"
        assert by_id[v["type_id"]]["name"] == "fuse_ops"
        assert INSTANCE_NAME.fullmatch(v["name"]), v["name"]
    assert sorted(names) == sorted(shared) and f"{checked.policy.name}_0" in names


@pytest.mark.parametrize("abi", ABIS)
@pytest.mark.parametrize("policy", POLICIES, ids=[p.name for p in POLICIES])
def test_check_object(objects, policy, abi):
    path = _obj(objects, policy, abi, "check")
    sections = elf_sections(path)
    assert "syscall" in sections, sorted(sections)
    assert sections["syscall"]["size"] > 0
    assert ".struct_ops" not in sections
    assert not any(name.startswith("struct_ops") for name in sections)
    assert "license" in sections and ".BTF" in sections


def test_elf_reader_agrees_with_readelf(objects):
    """The struct-based reader sees the sections binutils sees."""
    readelf = _need("readelf")
    policy = POLICIES[0]
    for which in WHICH:
        path = _obj(objects, policy, "v4", which)
        proc = subprocess.run([readelf, "-SW", str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        listed = set(re.findall(r"^\s*\[\s*[1-9]\d*\]\s+(\S+)\s+\S+\s", proc.stdout, re.M))
        assert listed == set(elf_sections(path))


def test_both_abis_differ(objects):
    """v3 and v4 builds of one policy are different objects (default_filter)."""
    p = POLICIES[0]
    a = _obj(objects, p, "v3", "struct_ops").read_bytes()
    b = _obj(objects, p, "v4", "struct_ops").read_bytes()
    assert a != b


# --- failures of the tool ----------------------------------------------------------------

BROKEN_C = """\
// SPDX-License-Identifier: GPL-2.0
typedef unsigned int __u32;

static int helper(void) { return 0; }

/* rule 0: p.fpol:3 deny write under /x */
static int fpol_rule_0(__u32 word)
{
	return word + undeclared_identifier;
}
"""


def test_clang_failure_names_the_generated_line_and_rule(tmp_path):
    try:
        clangmod.find_clang()
        clangmod.include_flags()
    except ToolMissing as e:
        pytest.skip(f"clang or libbpf headers missing: {e}")
    with pytest.raises(CompileFailure) as info:
        compile_c(BROKEN_C, str(tmp_path / "broken.o"), "broken")
    e = info.value
    bad = BROKEN_C.splitlines().index("\treturn word + undeclared_identifier;") + 1
    assert e.c_line == bad
    assert e.c_text == "return word + undeclared_identifier;"
    assert e.rule == "p.fpol:3 deny write under /x"
    assert "undeclared_identifier" in e.message
    text = str(e)
    assert f"generated line {bad}" in text and "p.fpol:3 deny write under /x" in text
    assert not (tmp_path / "broken.o").exists()


def test_clang_failure_without_a_rule_comment(tmp_path):
    try:
        clangmod.find_clang()
        clangmod.include_flags()
    except ToolMissing as e:
        pytest.skip(f"clang or libbpf headers missing: {e}")
    with pytest.raises(CompileFailure) as info:
        compile_c("int x = ;\n", str(tmp_path / "broken.o"), "broken")
    assert info.value.c_line == 1 and info.value.rule is None


def test_missing_clang_is_tool_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("CLANG", str(tmp_path / "no-such-clang-99"))
    with pytest.raises(ToolMissing) as info:
        compile_c("int x;\n", str(tmp_path / "x.o"))
    assert "no-such-clang-99" in str(info.value)
    monkeypatch.setenv("CLANG", "no-such-clang-on-path-99")
    with pytest.raises(ToolMissing):
        clangmod.find_clang()


# --- clang ending badly says why in one line (issue 13) ---------------------------------

def _fake_clang(tmp_path, body: str) -> str:
    path = tmp_path / "fake-clang"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_clang_killed_says_signal_and_what_to_do(monkeypatch, tmp_path):
    try:
        clangmod.include_flags()
    except ToolMissing as e:
        pytest.skip(f"libbpf headers missing: {e}")
    monkeypatch.setenv("CLANG", _fake_clang(tmp_path, "kill -KILL $$"))
    with pytest.raises(CompileFailure) as info:
        compile_c("int x;\n", str(tmp_path / "x.o"), "x")
    first = str(info.value).splitlines()[0]
    assert "killed by SIGKILL" in first and "out of memory" in first
    assert "split the policy" in first
    assert "clang said" not in str(info.value)  # it said nothing
    assert not (tmp_path / "x.o").exists()


def test_clang_driver_reporting_its_compiler_killed(monkeypatch, tmp_path):
    try:
        clangmod.include_flags()
    except ToolMissing as e:
        pytest.skip(f"libbpf headers missing: {e}")
    monkeypatch.setenv("CLANG", _fake_clang(
        tmp_path, "echo 'clang: error: unable to execute command: Killed' >&2; exit 254"))
    with pytest.raises(CompileFailure) as info:
        compile_c("int x;\n", str(tmp_path / "x.o"), "x")
    first = str(info.value).splitlines()[0]
    assert "compiler process was killed by SIGKILL" in first and "out of memory" in first
    assert "unable to execute command: Killed" in str(info.value)


def test_clang_failing_without_a_diagnostic_names_its_status(monkeypatch, tmp_path):
    try:
        clangmod.include_flags()
    except ToolMissing as e:
        pytest.skip(f"libbpf headers missing: {e}")
    monkeypatch.setenv("CLANG", _fake_clang(tmp_path, "exit 3"))
    with pytest.raises(CompileFailure) as info:
        compile_c("int x;\n", str(tmp_path / "x.o"), "x")
    assert str(info.value) == "clang failed (exit status 3) and printed nothing"
    monkeypatch.setenv("CLANG", _fake_clang(tmp_path, "echo 'LLVM ERROR: out of memory' >&2; exit 1"))
    with pytest.raises(CompileFailure) as info:
        compile_c("int x;\n", str(tmp_path / "x.o"), "x")
    first = str(info.value).splitlines()[0]
    assert first.startswith("clang failed (exit status 1): LLVM ERROR: out of memory: it ran out "
                            "of memory building 7 bytes of generated C")
    assert "split the policy" in first
