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
    """Build `source` into the BPF object `output`; raises CompileFailure or ToolMissing."""
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
