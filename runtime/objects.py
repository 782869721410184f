"""Build a checked policy's objects once: render, compile, and cache by content.

Both objects of a policy come from one lowering. The cache ($XDG_CACHE_HOME/fpol,
keyed by the C text and the compiler) makes repeated `verify`, `explain --engine
kernel` and test runs fast; the C text is kept beside the object so failures can
be mapped back to policy rules. Entries are written whole (temporary file, then rename),
so concurrent builds of one policy never corrupt the cache.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Optional

from fpol import __version__
from fpol.compiler.clang import compile_c, find_clang
from fpol.compiler.lower import Model, lower
from fpol.compiler.render import render

from .files import replace_atomically


@dataclass
class Built:
    model: Model
    path: str  # the object file
    source: str  # its C text


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "fpol", __version__)
    os.makedirs(path, exist_ok=True)
    return path


def build(checked, which: str, abi: Optional[str] = None, model: Optional[Model] = None,
          credentials: str = "kernel") -> Built:
    """The `struct_ops` or `check` object of a checked policy, from the cache if built before.
    `credentials` (struct_ops only): who reads the requester's ids for subject conditions,
    the programs (`kernel`) or the daemon (`daemon`); the check object always takes them
    from its requests."""
    model = model or lower(checked.classes, abi=abi,
                           source_name=os.path.basename(checked.source.file),
                           credentials=credentials if which == "struct_ops" else None)
    source = render(model, which)
    clang = find_clang()
    key = hashlib.sha256((clang + "\0" + source).encode()).hexdigest()[:32]
    suffix = ".check.bpf.o" if which == "check" else ".bpf.o"
    path = os.path.join(cache_dir(), f"{checked.policy.name}-{key}{suffix}")
    if not _complete(path):
        # Built under a name of its own and renamed into place: concurrent builds of the
        # same policy (two processes, or threads) each rename a whole object over the
        # entry, so a reader never sees a partial one; a failed or interrupted build
        # removes its file.
        replace_atomically(path, lambda tmp: compile_c(source, tmp, checked.policy.name))
    return Built(model, path, source)


def instance_names(checked, abi: Optional[str] = None, credentials: str = "kernel") -> list[str]:
    """Per class of `checked`, the name of the fuse_ops instance its struct_ops object gives
    it: classes that behave alike share one (compiler/lower.py _shared_instances), so a
    daemon that looks a child up itself attaches this name, not `<policy>_<class>`. The
    root's is `<policy>_0`."""
    model = lower(checked.classes, abi=abi, source_name=os.path.basename(checked.source.file),
                  credentials=credentials)
    return [i.name for i in model.instances]


def _complete(path: str) -> bool:
    """A cache entry that is a whole 64-bit ELF object: its section header table, which
    clang writes last, lies within the file. One damaged by something else (a full disk,
    a truncating copy) is rebuilt, not loaded."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
        return False
    order = "<" if head[5] == 1 else ">"
    (shoff,) = struct.unpack_from(order + "Q", head, 0x28)
    shentsize, shnum = struct.unpack_from(order + "HH", head, 0x3A)
    return shoff > 0 and shoff + shentsize * shnum <= size
