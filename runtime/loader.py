"""Attach a policy's struct_ops instances, all or none, and pin them so they outlive
the command; list and remove them again.

Layout: /sys/fs/bpf/fpol/<policy>/<instance>, one pinned struct_ops map per
instance (libbpf 1.1 attaches `.struct_ops` maps by registering the map; the
registration lives as long as the map, which the pin keeps). Unloading deletes
each map's element, which unregisters the instance, then removes the pins.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import libbpf
from fpol.compiler.errors import EnvironmentProblem, FpolError

PIN_ROOT = "/sys/fs/bpf/fpol"


class LoadRefused(FpolError):
    """Refused before anything was attached (a taken name, no bpffs, ...)."""


class KernelLacks(EnvironmentProblem):
    """The running kernel lacks the struct_ops type (exit code 3)."""


@dataclass
class Loaded:
    policy: str
    instances: list[str]
    pin_dir: str
    notes: list[str] = field(default_factory=list)  # what the load did besides attaching


def bpffs_mounted(path: str = "/sys/fs/bpf") -> bool:
    try:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == path and line.split()[2] == "bpf" for line in f)
    except OSError:
        return False


def ensure_bpffs(path: str = "/sys/fs/bpf") -> Optional[str]:
    """Mount bpffs at `path` where it is missing, as bpftool does (a fresh machine, or a
    container, may have none). Returns a note saying so, or None when it was mounted."""
    if bpffs_mounted(path):
        return None
    from . import libc

    try:
        os.makedirs(path, exist_ok=True)
        libc.mount("bpf", path, "bpf", 0, "mode=0700")
    except OSError as e:
        raise LoadRefused(f"bpffs is not mounted at {path} and mounting it failed: "
                          f"{os.strerror(e.errno) if e.errno else e}; mount it "
                          f"(mount -t bpf bpf {path}) and try again") from None
    return f"mounted bpffs at {path} (it was not mounted; pins need it)"


def preflight(struct_name: str) -> None:
    """Fail before touching the kernel when the struct_ops type is missing."""
    has = libbpf.kernel_btf_has_struct(struct_name)
    if has is None:
        raise KernelLacks("this kernel exposes no BTF (/sys/kernel/btf/vmlinux), so struct_ops "
                          "cannot be loaded")
    if not has:
        raise KernelLacks(f"this kernel has no `struct {struct_name}`")


def load(obj_path: str, policy: str, struct_name: str = "fuse_ops",
         pin_root: str = PIN_ROOT,
         step: Optional[Callable[[str, str], None]] = None) -> Loaded:
    """Load the object and attach every struct_ops instance in it, or none.

    A failure at any point (the object, an attach, the pin directory, a pin, or an
    interrupt) detaches what was attached, removes what was pinned and re-raises: the
    kernel and bpffs are left as they were. A taken name (a policy pinned under that
    name, or an instance name another program registered) is LoadRefused.

    `step(what, instance)` is called before each attach ("attach") and each pin ("pin"):
    a seam for tests, which raise from it to fail the load part-way."""
    preflight(struct_name)
    note = ensure_bpffs(os.path.dirname(pin_root))
    pin_dir = os.path.join(pin_root, policy)
    if os.path.exists(pin_dir):
        raise _already_loaded(policy, pin_dir)
    step = step or (lambda what, name: None)
    obj = libbpf.BpfObject(obj_path)
    attached: list[tuple[str, libbpf.Link]] = []
    pinned: list[str] = []
    made_dir = False
    try:
        obj.load()
        for m in obj.maps():
            if m.type != libbpf.BPF_MAP_TYPE_STRUCT_OPS:
                continue
            step("attach", m.name)
            try:
                attached.append((m.name, m.attach_struct_ops()))
            except libbpf.LibbpfError as e:
                if e.errno == errno.EEXIST:
                    raise LoadRefused(
                        f"an instance named `{m.name}` is already registered in the kernel "
                        f"(by another policy or program); nothing was loaded. `fpol status` "
                        f"lists fpol's policies; unload the other one or rename this policy"
                    ) from None
                raise
        os.makedirs(pin_root, exist_ok=True)
        try:
            os.mkdir(pin_dir)
        except FileExistsError:  # another `fpol load` of the same name got there first
            raise _already_loaded(policy, pin_dir) from None
        made_dir = True
        for name, link in attached:
            step("pin", name)
            path = os.path.join(pin_dir, name)
            link.pin(path)
            pinned.append(path)
    except BaseException:
        # All or nothing: unpin, detach, and remove only what this call made; a failure
        # while undoing must not hide the error that caused it.
        for path in pinned:
            try:
                os.unlink(path)
            except OSError:
                pass
        for _, link in attached:
            link.destroy()
        if made_dir:
            try:
                os.rmdir(pin_dir)
            except OSError:
                pass
        obj.close()
        raise
    # The pins keep the instances registered; closing our handles must not detach them,
    # so the links are left alone (never destroyed) and only the object is closed.
    obj.close()
    return Loaded(policy, [name for name, _ in attached], pin_dir, [note] if note else [])


def _already_loaded(policy: str, pin_dir: str) -> LoadRefused:
    return LoadRefused(f"a policy named `{policy}` is already loaded ({pin_dir}); "
                       f"`fpol unload {policy}` first")


def _unregister(path: str) -> None:
    """Delete the struct_ops map's only element: the kernel unregisters the instance."""
    lib = libbpf.lib()
    fd = lib.lib.bpf_obj_get(path.encode())
    if fd < 0:
        return
    try:
        key = ctypes.create_string_buffer(struct.pack("<I", 0), 4)
        lib.lib.bpf_map_delete_elem(fd, key)
    finally:
        os.close(fd)


def _remove_pin(path: str) -> None:
    _unregister(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def unload(policy: str, pin_root: str = PIN_ROOT) -> list[str]:
    pin_dir = os.path.join(pin_root, policy)
    if not os.path.isdir(pin_dir):
        raise LoadRefused(f"no policy named `{policy}` is loaded (nothing at {pin_dir})")
    names = sorted(os.listdir(pin_dir))
    for name in names:
        _remove_pin(os.path.join(pin_dir, name))
    os.rmdir(pin_dir)
    return names


def status(pin_root: str = PIN_ROOT) -> list[Loaded]:
    if not os.path.isdir(pin_root):
        return []
    out = []
    for policy in sorted(os.listdir(pin_root)):
        d = os.path.join(pin_root, policy)
        if os.path.isdir(d):
            out.append(Loaded(policy, sorted(os.listdir(d)), d))
    return out


def policy_name_of(obj_path: str) -> Optional[str]:
    """The policy name an object's instances carry (`<policy>_<n>`), without loading it."""
    with libbpf.BpfObject(obj_path) as obj:
        names = [m.name for m in obj.maps() if m.type == libbpf.BPF_MAP_TYPE_STRUCT_OPS]
    prefixes = {n.rsplit("_", 1)[0] for n in names if "_" in n}
    return prefixes.pop() if len(prefixes) == 1 else None
