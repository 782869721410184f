"""fpol: a declarative policy compiler for fuse-bpf."""

__version__ = "0.1.0"
