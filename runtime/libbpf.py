"""A thin, typed ctypes binding over the system libbpf.so.1 (libbpf 1.1 API).

The only module in fpol that touches ctypes. libbpf's messages (including the
verifier log of a failed load) are captured and carried by LibbpfError; a
successful load can report per-program verifier statistics.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_module
import os
import platform
import re
import threading
from dataclasses import dataclass
from typing import Iterator, Optional
from fpol.compiler.errors import EnvironmentProblem, FpolError

c_int, c_uint, c_char_p, c_void_p, c_size_t = ctypes.c_int, ctypes.c_uint, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t
c_uint32, c_uint64, c_bool = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_bool

BPF_PROG_TYPE_SYSCALL = 31
BPF_PROG_TYPE_STRUCT_OPS = 27
BPF_MAP_TYPE_STRUCT_OPS = 26
BTF_KIND_STRUCT = 4
BPF_LOG_LEVEL_STATS = 4


class LibbpfError(FpolError):
    """A libbpf call failed: errno, what libbpf printed, and the verifier log if any."""

    def __init__(self, what: str, err: int, messages: list[str]):
        self.what = what
        self.errno = abs(err)
        self.messages = messages
        name = errno_module.errorcode.get(self.errno, str(self.errno))
        text = f"{what}: {os.strerror(self.errno)} ({name})"
        if self.reason:
            text += f": {self.reason}"
        super().__init__(text)

    @property
    def reason(self) -> str:
        """The verifier's own reason when it refused a program (the line of its log that
        says why, e.g. "R2 unbounded memory access" or "jump out of range ..."); else
        libbpf's own account of the refusal: its first warning that names what failed
        (a program, a map, a struct_ops member, an extern), else its first warning."""
        why = verifier_reason(self.verifier_log)
        if why:
            program = re.search(r"prog '([^']+)': -- BEGIN PROG LOAD LOG --", self.log)
            return f"verifier: {why}" + (f" (program {program.group(1)})" if program else "")
        warnings = [m.strip() for m in self.messages if m.startswith(_WARN_MARK)]
        lines = [w[len(_WARN_MARK):].removeprefix("libbpf: ").splitlines()[0] for w in warnings
                 if w[len(_WARN_MARK):].strip()]
        lines = [l for l in lines if "PROG LOAD LOG" not in l]
        telling = [l for l in lines if not l.startswith(("failed to load object",
                                                         "failed to load BPF skeleton"))]
        return (telling or lines or [""])[0]

    @property
    def log(self) -> str:
        return "".join(m.removeprefix(_WARN_MARK) for m in self.messages)

    @property
    def verifier_log(self) -> str:
        m = re.search(r"-- BEGIN PROG LOAD LOG --\n(.*?)-- END PROG LOAD LOG --", self.log, re.S)
        return m.group(1) if m else ""


_VERIFIER_NOISE = re.compile(
    r"^(\d+: \(|; |processed \d+ insns|verification time|stack depth|from \d+ to \d+|func#|"
    r"Validating |mark_precise|last_idx|regs=|parent |Func#|propagating|frame\d|\.\.\.|"
    r"Live regs|-- END|libbpf:)")
_REGISTER_STATE = re.compile(r"^(\d+: )?((R\d+(_[rwD]+)?|fp-?\d+(_[rwD]+)?)=\S+\s*)+$")


def verifier_reason(log: str) -> str:
    """The line of a verifier log that says why it refused: the last one that is not an
    instruction, a source annotation, a register state or the closing statistics."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if line and not _VERIFIER_NOISE.match(line) and not _REGISTER_STATE.match(line):
            return line
    return ""


# libbpf's warnings (LIBBPF_WARN) are kept with this mark in front, so a refusal can be
# told from the debug chatter around it.
_WARN_MARK = "\x00W"
LIBBPF_WARN = 0


class LibbpfMissing(EnvironmentProblem):
    """libbpf.so.1 is not installed."""


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p), ("data_out", c_void_p),
        ("data_size_in", c_uint32), ("data_size_out", c_uint32),
        ("ctx_in", c_void_p), ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32), ("ctx_size_out", c_uint32),
        ("retval", c_uint32), ("repeat", c_int), ("duration", c_uint32),
        ("flags", c_uint32), ("cpu", c_uint32), ("batch_size", c_uint32),
    ]


_PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


class _Lib:
    """The loaded library with prototypes, and the captured print output."""

    def __init__(self):
        path = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            self.lib = ctypes.CDLL(path, use_errno=True)
        except OSError as e:
            raise LibbpfMissing(f"cannot load libbpf ({path}): {e}; install libbpf1") from None
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
        self.lock = threading.Lock()
        self.messages: list[str] = []
        self._prototypes()
        # Formatting the va_list with vsnprintf works where va_list is passed as a pointer
        # (x86_64); elsewhere keep the format string only.
        self._can_format = platform.machine() in ("x86_64", "AMD64")
        self._callback = _PRINT_FN(self._print)
        self.lib.libbpf_set_print(self._callback)

    def _print(self, level, fmt, ap):
        if self._can_format:
            buf = ctypes.create_string_buffer(65536)
            n = self.libc.vsnprintf(buf, len(buf), fmt, ap)
            text = buf.value.decode("utf-8", "replace")
        else:
            text = fmt.decode("utf-8", "replace")
            n = len(text)
        self.messages.append(_WARN_MARK + text if level == LIBBPF_WARN else text)
        return n

    def _prototypes(self):
        L = self.lib
        sig = {
            "libbpf_set_print": (c_void_p, [_PRINT_FN]),
            "libbpf_major_version": (c_uint32, []),
            "libbpf_minor_version": (c_uint32, []),
            "libbpf_version_string": (c_char_p, []),
            "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
            "bpf_object__load": (c_int, [c_void_p]),
            "bpf_object__close": (None, [c_void_p]),
            "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
            "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
            "bpf_program__name": (c_char_p, [c_void_p]),
            "bpf_program__fd": (c_int, [c_void_p]),
            "bpf_program__type": (c_int, [c_void_p]),
            "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
            "bpf_program__set_log_buf": (c_int, [c_void_p, c_char_p, c_size_t]),
            "bpf_program__set_log_level": (c_int, [c_void_p, c_uint32]),
            "bpf_map__name": (c_char_p, [c_void_p]),
            "bpf_map__fd": (c_int, [c_void_p]),
            "bpf_map__type": (c_int, [c_void_p]),
            "bpf_map__attach_struct_ops": (c_void_p, [c_void_p]),
            "bpf_map__set_autocreate": (c_int, [c_void_p, c_bool]),
            "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
            "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
            "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
            "bpf_link__destroy": (c_int, [c_void_p]),
            "bpf_link__pin": (c_int, [c_void_p, c_char_p]),
            "bpf_link__unpin": (c_int, [c_void_p]),
            "bpf_link__open": (c_void_p, [c_char_p]),
            "bpf_link__fd": (c_int, [c_void_p]),
            "bpf_link__detach": (c_int, [c_void_p]),
            "bpf_prog_test_run_opts": (c_int, [c_int, ctypes.POINTER(_TestRunOpts)]),
            "btf__load_vmlinux_btf": (c_void_p, []),
            "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint32]),
            "btf__free": (None, [c_void_p]),
            "bpf_obj_get": (c_int, [c_char_p]),
            "libbpf_probe_bpf_helper": (c_int, [c_int, c_int, c_void_p]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(L, name)
            fn.restype = res
            fn.argtypes = args

    def take_messages(self) -> list[str]:
        out, self.messages = self.messages, []
        return out


_lib: Optional[_Lib] = None


def lib() -> _Lib:
    global _lib
    if _lib is None:
        _lib = _Lib()
    return _lib


def version() -> str:
    L = lib().lib
    return L.libbpf_version_string().decode()


def _errno_of(ret: int) -> int:
    return -ret if ret < 0 else (ctypes.get_errno() or errno_module.EINVAL)


@dataclass
class VerifierStats:
    insns_processed: int
    verification_usec: Optional[int]
    stack_depth: Optional[str]


def _parse_stats(log: str) -> Optional[VerifierStats]:
    m = re.search(r"processed (\d+) insns", log)
    if not m:
        return None
    t = re.search(r"verification time (\d+) usec", log)
    s = re.search(r"stack depth (\S+)", log)
    return VerifierStats(int(m.group(1)), int(t.group(1)) if t else None, s.group(1) if s else None)


class Program:
    def __init__(self, obj: "BpfObject", ptr: int):
        self.obj = obj
        self.ptr = ptr

    @property
    def name(self) -> str:
        return lib().lib.bpf_program__name(self.ptr).decode()

    @property
    def fd(self) -> int:
        return lib().lib.bpf_program__fd(self.ptr)

    @property
    def type(self) -> int:
        return lib().lib.bpf_program__type(self.ptr)

    def set_autoload(self, on: bool) -> None:
        lib().lib.bpf_program__set_autoload(self.ptr, on)

    def want_stats(self, size: int = 1 << 16) -> None:
        """Ask the verifier for its statistics (kept by the object: wrappers are transient)."""
        buf = self.obj.log_bufs[self.ptr] = ctypes.create_string_buffer(size)
        lib().lib.bpf_program__set_log_buf(self.ptr, buf, size)
        lib().lib.bpf_program__set_log_level(self.ptr, BPF_LOG_LEVEL_STATS)

    @property
    def stats(self) -> Optional[VerifierStats]:
        buf = self.obj.log_bufs.get(self.ptr)
        if buf is None:
            return None
        return _parse_stats(buf.value.decode("utf-8", "replace"))

    def test_run(self, ctx: bytearray) -> int:
        """BPF_PROG_TEST_RUN of a syscall program: `ctx` goes in and the kernel copies it
        back in place (syscall programs take ctx_in only). Returns the program's retval."""
        buf = (ctypes.c_char * len(ctx)).from_buffer(ctx)
        opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), ctx_in=ctypes.addressof(buf),
                            ctx_size_in=len(ctx))
        ret = lib().lib.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts))
        if ret != 0:
            raise LibbpfError(f"test run of {self.name}", _errno_of(ret), lib().take_messages())
        return opts.retval


class Map:
    def __init__(self, obj: "BpfObject", ptr: int):
        self.obj = obj
        self.ptr = ptr

    @property
    def name(self) -> str:
        return lib().lib.bpf_map__name(self.ptr).decode()

    @property
    def fd(self) -> int:
        return lib().lib.bpf_map__fd(self.ptr)

    @property
    def type(self) -> int:
        return lib().lib.bpf_map__type(self.ptr)

    def set_autocreate(self, on: bool) -> None:
        lib().lib.bpf_map__set_autocreate(self.ptr, on)

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value, len(value))
        ret = lib().lib.bpf_map_update_elem(self.fd, k, v, flags)
        if ret != 0:
            raise LibbpfError(f"update of map {self.name}", _errno_of(ret), lib().take_messages())

    def attach_struct_ops(self) -> "Link":
        lib().take_messages()
        ptr = lib().lib.bpf_map__attach_struct_ops(self.ptr)
        if not ptr:
            raise LibbpfError(f"attach of {self.name}", _errno_of(-ctypes.get_errno()),
                              lib().take_messages())
        return Link(ptr)


class Link:
    def __init__(self, ptr: int):
        self.ptr: Optional[int] = ptr

    @staticmethod
    def open_pinned(path: str) -> "Link":
        ptr = lib().lib.bpf_link__open(path.encode())
        if not ptr:
            raise LibbpfError(f"open of pinned link {path}", _errno_of(-ctypes.get_errno()),
                              lib().take_messages())
        return Link(ptr)

    def pin(self, path: str) -> None:
        ret = lib().lib.bpf_link__pin(self.ptr, path.encode())
        if ret != 0:
            raise LibbpfError(f"pin at {path}", _errno_of(ret), lib().take_messages())

    def unpin(self) -> None:
        lib().lib.bpf_link__unpin(self.ptr)

    def destroy(self) -> None:
        if self.ptr:
            lib().lib.bpf_link__destroy(self.ptr)
            self.ptr = None


class BpfObject:
    """An opened (and maybe loaded) BPF object file. Use as a context manager."""

    def __init__(self, path: str):
        self.path = path
        L = lib()
        L.take_messages()
        ptr = L.lib.bpf_object__open_file(path.encode(), None)
        if not ptr:
            raise LibbpfError(f"open of {path}", _errno_of(-ctypes.get_errno()), L.take_messages())
        self.ptr = ptr
        self.loaded = False
        self.log_bufs: dict = {}

    def programs(self) -> Iterator[Program]:
        p = None
        while True:
            p = lib().lib.bpf_object__next_program(self.ptr, p)
            if not p:
                return
            yield Program(self, p)

    def maps(self) -> Iterator[Map]:
        m = None
        while True:
            m = lib().lib.bpf_object__next_map(self.ptr, m)
            if not m:
                return
            yield Map(self, m)

    def program(self, name: str) -> Program:
        for p in self.programs():
            if p.name == name:
                return p
        raise KeyError(name)

    def map(self, name: str) -> Map:
        for m in self.maps():
            if m.name == name:
                return m
        raise KeyError(name)

    def load(self) -> None:
        L = lib()
        L.take_messages()
        ret = L.lib.bpf_object__load(self.ptr)
        if ret != 0:
            raise LibbpfError(f"load of {os.path.basename(self.path)}", _errno_of(ret),
                              L.take_messages())
        self.loaded = True

    def close(self) -> None:
        if self.ptr:
            lib().lib.bpf_object__close(self.ptr)
            self.ptr = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


BPF_PROG_TYPE_SYSCALL = 31
BPF_FUNC_GET_CURRENT_TASK_BTF = 158


def probe_helper(prog_type: int, helper: int) -> Optional[bool]:
    """Can a program of `prog_type` call BPF helper `helper` here (libbpf loads a tiny one
    and reads the verifier's answer)? None when it cannot tell."""
    ret = lib().lib.libbpf_probe_bpf_helper(prog_type, helper, None)
    lib().take_messages()
    if ret < 0:
        return None
    return ret == 1


def kernel_btf_has_struct(name: str) -> Optional[bool]:
    """Does the running kernel's BTF define `struct name`? None if there is no kernel BTF."""
    L = lib().lib
    btf = L.btf__load_vmlinux_btf()
    if not btf:
        lib().take_messages()
        return None
    try:
        return L.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT) > 0
    finally:
        L.btf__free(btf)


def kernel_btf_struct_has_member(struct: str, member: str) -> Optional[bool]:
    """Whether `struct` in kernel BTF has `member` (via the raw BTF blob; libbpf 1.1's
    btf__type_by_id returns a struct ctypes would have to mirror, so parse it here)."""
    from . import btf as btfmod

    return btfmod.struct_has_member("/sys/kernel/btf/vmlinux", struct, member)
