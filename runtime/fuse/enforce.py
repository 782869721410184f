"""Policy enforcement in the daemon: decide each request, then refuse, perform, or consult.

Single-object requests are decided per class, exactly as the generated C decides: each
node stores its class (stepped from its parent's class by name at lookup, see inodes.py)
and a request reads one entry of that class's decision table. rename and link go through
the reference evaluator with both full paths, because the daemon knows them and so can
apply "no gain by moving" exactly (EXDEV) where the kernel programs must be conservative.

deny -> the errno; allow -> perform; userspace -> a handler (default: perform and log; or
a user callable from `--handler MODULE:FUNC`). `audit` decisions and complain-mode denials
are written as JSON lines to the audit stream.
"""

from __future__ import annotations

import errno as errno_mod
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, TextIO, TypeVar, Union

from fpol.compiler.classes import ClassTree
from fpol.compiler.decide import Decision, combine, stricter
from fpol.compiler.evaluate import Verdict
from fpol.compiler.policy import ALLOW, DENY, USERSPACE, Policy
from fpol.compiler.view import Place, PolicyView
from fpol.compiler.errors import UsageProblem

T = TypeVar("T")

# The kernel treats ENOSYS from most FUSE requests as "not implemented" and stops sending
# them (a denied OPEN or ACCESS would become allowed for the rest of the mount), so a
# policy's ENOSYS is replied as EOPNOTSUPP. This is the only errno the daemon changes.
REPLACED_ERRNOS = {"ENOSYS": "EOPNOTSUPP"}


def errno_number(name: str) -> int:
    name = REPLACED_ERRNOS.get(name, name)
    value = getattr(errno_mod, name, None)
    if not isinstance(value, int) or not 0 < value < 512:
        return errno_mod.EIO
    return value


def errno_name(value: int) -> str:
    return errno_mod.errorcode.get(value, str(value))


class Refused(Exception):
    """The policy or a handler refused the request with this errno."""

    def __init__(self, errno: int):
        super().__init__(errno_name(errno))
        self.errno = errno


@dataclass
class Event:
    """One request as the policy sees it (what the audit log and handlers get)."""

    op: str
    path: Optional[tuple[bytes, ...]]
    to: Optional[tuple[bytes, ...]] = None
    flags: int = 0
    mask: int = 0
    pid: int = 0
    uid: int = 0
    gid: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "path": show_path(self.path),
                "to": show_path(self.to) if self.to is not None else None,
                "flags": self.flags, "mask": self.mask,
                "pid": self.pid, "uid": self.uid, "gid": self.gid}


def show_path(path: Optional[tuple[bytes, ...]]) -> Optional[str]:
    if path is None:
        return None  # the object was unlinked while open
    return "/" + "/".join(p.decode("utf-8", "surrogateescape") for p in path)


# --- audit ------------------------------------------------------------------------------

class AuditLog:
    """JSON lines, one per event, each reaching the file whole in one write(2) at once (a
    crash must not lose the trail, and a reader must never see half a line)."""

    def __init__(self, stream: TextIO, policy: Policy):
        self.stream = stream
        self.policy = policy

    def rule(self, index: Optional[int]) -> Optional[dict]:
        if index is None:
            d = self.policy.default
            return {"line": d.line, "text": f"default {d.text}"} if d.line else None
        r = self.policy.rules[index]
        return {"line": r.line, "text": r.text, "file": r.file or self.policy.file}

    def write(self, ev: Event, decision: str, errno: Optional[int], rule: Optional[int],
              result: Optional[int] = None, **extra) -> None:
        rec = {"time": round(time.time(), 6), "op": ev.op, "path": show_path(ev.path),
               "to": show_path(ev.to) if ev.to is not None else None,
               "decision": decision, "errno": errno_name(errno) if errno else None,
               "rule": self.rule(rule), "pid": ev.pid or None, "uid": ev.uid, "gid": ev.gid,
               "flags": ev.flags, "mask": ev.mask}
        if result is not None:
            rec["result"] = "ok" if result == 0 else errno_name(result)
        rec.update(extra)
        try:
            write_line(self.stream, json.dumps(rec, ensure_ascii=True) + "\n")
        except (OSError, ValueError):
            pass  # a closed or broken audit stream must not stop the filesystem


def write_line(stream: TextIO, line: str) -> None:
    """One line in one write(2) on the stream's descriptor (O_APPEND files take it whole),
    after whatever the stream still buffers; a stream without a descriptor gets write()."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        stream.write(line)
        stream.flush()
        return
    stream.flush()
    data = line.encode("utf-8", "surrogateescape")
    while data:
        n = os.write(fd, data)
        data = data[n:]


# --- handlers ---------------------------------------------------------------------------

Handler = Callable[[dict], Union[None, int, str]]


class HandlerError(UsageProblem):
    """`--handler` names something that cannot be loaded."""


def load_handler(spec: str) -> Handler:
    """`MODULE:FUNC` (importable module) or `path/to/file.py:FUNC`."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise HandlerError(f"handler `{spec}`: expected MODULE:FUNC or FILE.py:FUNC")
    try:
        if module_name.endswith(".py"):
            path = os.path.abspath(module_name)
            loader_spec = importlib.util.spec_from_file_location("fpol_user_handler", path)
            if loader_spec is None or loader_spec.loader is None:
                raise HandlerError(f"handler `{spec}`: cannot load {path}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except HandlerError:
        raise
    except Exception as e:  # the user's module failed to import: say why
        raise HandlerError(f"handler `{spec}`: cannot import {module_name}: "
                           f"{type(e).__name__}: {e}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise HandlerError(f"handler `{spec}`: {module_name} has no callable `{func_name}`")
    return func


def _refusal(answer: Union[None, int, str]) -> Optional[int]:
    """A handler's answer -> None (perform) or the errno to refuse with."""
    if answer is None or answer == 0 or answer is False:
        return None
    if isinstance(answer, bool):  # True: refuse without saying why
        return errno_mod.EACCES
    if isinstance(answer, int):
        value = abs(answer)
        return value if 0 < value < 512 and value != errno_mod.ENOSYS else errno_mod.EIO
    if isinstance(answer, str):
        return errno_number(answer) if hasattr(errno_mod, answer) else errno_mod.EIO
    return errno_mod.EIO


# --- the enforcer -----------------------------------------------------------------------

class Enforcer:
    """Decides requests with one PolicyView at a time; `swap` replaces it (a reload).

    Places are the view's: whoever stores them (the inode table) must classify again
    after a swap, and the new view refuses a place of the old one."""

    def __init__(self, view: Union[PolicyView, ClassTree], audit: AuditLog,
                 handler: Optional[Handler] = None, handler_name: str = "default"):
        self.view = view if isinstance(view, PolicyView) else PolicyView(view)
        self.audit = audit
        self.handler = handler
        self.handler_name = handler_name if handler else "default"
        # (decision, rule) of the last request run, for metrics; the server resets it
        self.last: Optional[tuple[Decision, Optional[int]]] = None

    def rule_label(self, rule: Optional[int]) -> str:
        """FILE:LINE of a rule (metrics labels), or `default`."""
        if rule is None:
            return "default"
        r = self.policy.rules[rule]
        return f"{r.file or self.policy.file}:{r.line}"

    def swap(self, view: PolicyView) -> None:
        self.view = view
        self.audit.policy = view.policy

    @property
    def policy(self) -> Policy:
        return self.view.policy

    # --- decisions ---------------------------------------------------------------------

    @property
    def root_place(self) -> Place:
        return self.view.root

    def child_place(self, parent: Place, name: bytes) -> Place:
        return self.view.child(parent, name)

    def subject(self, uid: int, gid: int) -> int:
        """The subject class of a request's fsuid and fsgid (a handle of the view)."""
        return self.view.subject(uid, gid)

    def decision(self, place: Place, atom: str, subject: int) -> Decision:
        return self.view.decision(place, atom, subject)

    def plain_allow(self, place: Place, atom: str) -> bool:
        """Allowed with nothing to log or ask, for everyone: the kernel may do it without
        the daemon, whoever asks."""
        return self.view.plain_allow(place, atom)

    def two_path(self, op: str, src: tuple, dst: tuple, src_place: Place, dst_place: Place,
                 uid: int, gid: int) -> Verdict:
        """rename / link with full paths and their places, by requester `uid`, `gid`: the
        evaluator's exact semantics (PolicyView.move)."""
        return self.view.move(op, src, dst, src_place, dst_place, uid, gid)

    @staticmethod
    def stricter(first: Verdict, second: Verdict) -> Verdict:
        """RENAME_EXCHANGE moves both objects: the stricter of the two directions."""
        return first if stricter(first.decision, second.decision) is first.decision else second

    def carried(self, d: Decision) -> Decision:
        """An allowed move the daemon refuses because it would carry an open passthrough
        handle into a class that does not plainly allow what the handle was opened for
        (the kernel serves that handle's reads and writes without asking the daemon, so the
        new class's rules could not reach them): EXDEV, as for "no gain by moving", so that
        mv copies instead. In complain mode it is logged and allowed, like any refusal."""
        if self.policy.mode == "complain":
            return replace(d, audit=True, complained=True, complained_errno="EXDEV") \
                if d.kind == ALLOW else d
        return Decision(DENY, errno="EXDEV", audit=d.audit, audit_rules=d.audit_rules)

    combine = staticmethod(combine)  # two ends of one request, as the evaluator combines them

    # --- acting on a decision ------------------------------------------------------------

    def run(self, d: Decision, event: Union[Event, Callable[[], Event]],
            perform: Callable[[], T], undo: Optional[Callable[[T], object]] = None,
            rule: Optional[int] = None, exdev: bool = False) -> T:
        """Refuse, perform, or consult the handler, as decision `d` says; log what it asks.

        `rule` overrides the rule named in the log (the escaped source rule of an EXDEV);
        `exdev` says a complained decision was a "no gain by moving" refusal."""
        if d.kind == ALLOW and not d.audit and not d.complained:
            self.last = (d, None)
            return perform()  # the common case, kept short
        noted = d.audit or d.complained or d.kind == USERSPACE
        ev = (event() if callable(event) else event) if noted or d.kind == DENY else None
        if rule is None:
            rule = d.rules[0] if d.rules else None
        self.last = (d, rule)
        audit_rule = d.audit_rules[0] if d.audit_rules else rule
        if d.kind == DENY:
            err = errno_number(d.errno or "EACCES")
            if d.audit:
                assert ev is not None  # noted
                self.audit.write(ev, DENY, err, rule, result=err)
            raise Refused(err)
        if d.kind == USERSPACE:
            assert ev is not None  # noted
            return self._userspace(d, ev, perform, undo, rule)
        try:
            result = perform()
        except OSError as e:
            if noted:
                assert ev is not None
                self._note(ev, d, rule, audit_rule, e.errno, exdev)
            raise
        if noted:
            assert ev is not None
            self._note(ev, d, rule, audit_rule, 0, exdev)
        return result

    def _note(self, ev: Event, d: Decision, rule, audit_rule, result: Optional[int],
              exdev: bool = False) -> None:
        if d.complained:
            self.audit.write(ev, ALLOW, errno_number(self._denied_with(d, exdev)), rule,
                             result=result, complained=True)
        else:
            self.audit.write(ev, ALLOW, None, audit_rule, result=result)

    @staticmethod
    def _denied_with(d: Decision, exdev: bool) -> str:
        """The errno a complained decision would have refused with (kept by the decision)."""
        if exdev:
            return "EXDEV"
        return d.complained_errno or "EACCES"

    def _userspace(self, d: Decision, ev: Event, perform, undo, rule):
        mode = d.mode or "instead"
        if mode != "after":
            refused = self._consult(ev, d, mode, None)
            if refused:
                self._log_userspace(ev, d, rule, refused, refused)
                raise Refused(refused)
        try:
            result = perform()
        except OSError as e:
            if mode == "after":
                self._consult(ev, d, mode, e.errno)  # it may look, but cannot undo a failure
            self._log_userspace(ev, d, rule, None, e.errno)
            raise
        if mode == "after":
            refused = self._consult(ev, d, mode, 0)
            if refused:
                if undo is not None:
                    undo(result)
                self._log_userspace(ev, d, rule, refused, refused)
                raise Refused(refused)
        self._log_userspace(ev, d, rule, None, 0)
        return result

    def _consult(self, ev: Event, d: Decision, mode: str, result: Optional[int]) -> Optional[int]:
        if self.handler is None:
            return None  # the default handler performs the op (and it is logged)
        info = ev.as_dict()
        info["mode"] = mode
        info["rule"] = self.audit.rule(d.rules[0] if d.rules else None)
        if result is not None:
            info["result"] = 0 if result == 0 else -result
        try:
            return _refusal(self.handler(info))
        except Exception:
            print(f"fpol mount: handler {self.handler_name} failed on {ev.op} "
                  f"{show_path(ev.path)}; refusing with EIO:\n{traceback.format_exc()}",
                  file=sys.stderr, flush=True)
            return errno_mod.EIO

    def _log_userspace(self, ev: Event, d: Decision, rule, refused: Optional[int],
                       result: Optional[int]) -> None:
        # The default handler logs every op it performs; a user handler's events are
        # logged when it refuses or the policy audits them.
        if self.handler is None or refused or d.audit:
            self.audit.write(ev, USERSPACE, refused, rule, result=result,
                             mode=d.mode, handler=self.handler_name)
