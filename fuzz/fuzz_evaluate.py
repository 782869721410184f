"""Coverage-guided fuzzing of the evaluator and the class tree.

An input is a policy and requests: the bytes up to the first NUL are the policy text (so
the seeds are the example and case policies, and libFuzzer mutates real policies); the
bytes after it drive a FuzzedDataProvider. When the text is empty (no NUL, or nothing
before it) the provider writes the policy too, from the language's building blocks (the
vocabulary of tests/strategies.py). A policy that checks clean must then:

- decide every generated request with the evaluator without raising (two-path requests,
  "no gain by moving", complain mode included), and
- have a class tree that decides every atom as the evaluator does at both paths of each
  request (kind, errno, userspace mode, audit, deciding rules).

Request names come from the policy's own literals and glob witnesses (the names its rules
can tell apart), the shared vocabulary, their upper-case forms, and raw provider bytes.

    python3 fuzz/fuzz_evaluate.py -max_total_time=300
"""

import atheris

from common import filler, policy_seeds, run

with atheris.instrument_imports(include=["fpol"]):
    from fpol.compiler import ops
    from fpol.compiler.driver import check
    from fpol.compiler.evaluate import Evaluator, Request
    from fpol.compiler.paths import ANY, Glob, TooManyGlobStates, glob_witnesses
    from oracles import assert_classes_agree
    import strategies as S

HEADERS = ("", "default deny\n", "default deny with EROFS\n", "default redirect to userspace\n",
           "mode complain\n", "names case-insensitive\n", "mode complain\ndefault deny\n",
           "names case-insensitive\ndefault deny\n")
ACTIONS = ("allow", "deny", "audit", "redirect")
MODES = ("", " before", " after", " instead")
SCOPE_KINDS = ("under", "at", "matching", "named")


def _pick(fdp, seq):
    return seq[fdp.ConsumeIntInRange(0, len(seq) - 1)]


def _quote(name: bytes) -> str:
    out = []
    for b in name:
        ch = chr(b)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x21 <= b < 0x7f or ch == " ":
            out.append(ch)
        else:
            out.append(f"\\x{b:02x}")
    return '"' + "".join(out) + '"'


def _scope(fdp) -> str:
    kind = _pick(fdp, SCOPE_KINDS)
    if kind in ("under", "at"):
        comps = [_pick(fdp, S.NAMES + S.PLAIN_ONLY_NAMES)
                 for _ in range(fdp.ConsumeIntInRange(0 if kind == "under" else 1, 3))]
        return f"{kind} {_quote(b'/' + b'/'.join(comps))}"
    if kind == "named":
        return f'named "{_pick(fdp, S.NAME_GLOBS)}"'
    comps = []
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        c = fdp.ConsumeIntInRange(0, 3)
        comps.append("**" if c == 0 else _pick(fdp, S.NAME_GLOBS) if c == 1
                     else _quote(_pick(fdp, S.NAMES))[1:-1])
    return 'matching "/' + "/".join(comps) + '"'


def _policy(fdp) -> str:
    lines = [_pick(fdp, HEADERS)]
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        action = _pick(fdp, ACTIONS)
        mode = _pick(fdp, MODES) if action == "redirect" else ""
        words = S.MODE_WORDS[mode.strip()] if mode.strip() in S.MODE_WORDS else S.OP_WORDS
        text = f"{action} " + ", ".join(_pick(fdp, words) for _ in range(fdp.ConsumeIntInRange(1, 3)))
        if action == "redirect":
            text += " to userspace" + mode
        for _ in range(fdp.ConsumeIntInRange(0, 2)):
            text += " " + _scope(fdp)
        if fdp.ConsumeBool():
            text += " except " + _scope(fdp)
        if action == "deny" and fdp.ConsumeBool():
            text += " with " + _pick(fdp, S.SAFE_ERRNOS + S.ODD_ERRNOS)
        lines.append(text)
    return "\n".join(lines) + "\n"


def _vocabulary(policy) -> list[bytes]:
    literals, globs = set(), set()
    for r in policy.rules:
        for term in r.terms + r.excepts:
            for pattern in term.patterns:
                for part in pattern:
                    if isinstance(part, Glob):
                        globs.add(part.text)
                    elif part is not ANY:
                        literals.add(part)
    names = set(literals)
    try:
        names.update(glob_witnesses(sorted(globs), frozenset(literals)))
    except TooManyGlobStates:
        pass
    names.update(S.REQUEST_NAMES)
    names.update(n.upper() for n in list(names))
    return sorted(n for n in names if n and b"/" not in n and n not in (b".", b".."))


def _path(fdp, names) -> tuple:
    out = []
    for _ in range(fdp.ConsumeIntInRange(0, 5)):
        if fdp.ConsumeIntInRange(0, 7):
            out.append(_pick(fdp, names))
        else:
            raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 12)).replace(b"/", b"_").replace(b"\0", b"_")
            if raw and raw not in (b".", b".."):
                out.append(raw)
    return tuple(out)


def test_one_input(data: bytes) -> None:
    text, _, rest = data.partition(b"\0")
    fdp = atheris.FuzzedDataProvider(rest)
    if not text:
        text = _policy(fdp).encode()
    checked = check(text, "fuzz.fpol")
    if not checked.ok:
        return
    evaluator = Evaluator(checked.policy)
    names = _vocabulary(checked.policy)
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        op = _pick(fdp, ops.SINGLE_OPS)
        path = _path(fdp, names)
        to = _path(fdp, names) if op in ops.TWO_PATH_OPS else None
        flags = fdp.ConsumeIntInRange(0, 0o17777777) if op in ("open", "create") else 0
        mask = fdp.ConsumeIntInRange(0, 15) if op == "access" else 0
        req = Request(op, path, to, flags, mask)
        evaluator.evaluate(req)
        assert_classes_agree(checked, evaluator, path)
        if to is not None:
            assert_classes_agree(checked, evaluator, to)


def seeds() -> list[bytes]:
    out = [p + b"\0" + filler(p, 64) for p in policy_seeds()]
    out += [b"\0" + filler(bytes([i]), 200) for i in range(16)]  # provider-built policies
    return out


if __name__ == "__main__":
    run("evaluate", test_one_input, seeds, dictionary=True)
