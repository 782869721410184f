"""Build a checked policy's objects once: render, compile, and cache by content.

Both objects of a policy come from one lowering. The cache ($XDG_CACHE_HOME/fpol,
keyed by the C text and the compiler) makes repeated `verify`, `explain --engine
kernel` and test runs fast; the C text is kept beside the object so failures can
be mapped back to policy rules.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

from fpol import __version__
from fpol.compiler.clang import compile_c, find_clang
from fpol.compiler.lower import Model, lower
from fpol.compiler.render import render


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


def build(checked, which: str, abi: Optional[str] = None, model: Optional[Model] = None) -> Built:
    """The `struct_ops` or `check` object of a checked policy, from the cache if built before."""
    model = model or lower(checked.classes, abi=abi,
                           source_name=os.path.basename(checked.source.file))
    source = render(model, which)
    clang = find_clang()
    key = hashlib.sha256((clang + "\0" + source).encode()).hexdigest()[:32]
    suffix = ".check.bpf.o" if which == "check" else ".bpf.o"
    path = os.path.join(cache_dir(), f"{checked.policy.name}-{key}{suffix}")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        compile_c(source, tmp, checked.policy.name)
        os.replace(tmp, path)
    return Built(model, path, source)
