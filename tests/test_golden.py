"""Generated C, pinned byte for byte.

For every example and every clean tests/cases/*.fpol (tests/policyset.py), the
struct_ops source (render(lower(tree), "struct_ops")) and the check-object source are
stored as tests/golden/NAME.bpf.c and NAME.check.bpf.c. A change to the compiler that
changes the output fails here until the goldens are regenerated on purpose:

    python3 -m pytest tests/test_golden.py --update-goldens    # then review `git diff`

Then: two spellings of one policy (LANGUAGE.md §5, docs/language.md §8) written at the
same line numbers under the same file name compile to identical C.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fpol.compiler.driver import check
from fpol.compiler.lower import lower
from fpol.compiler.render import render
from policyset import GOLDEN_DIR, golden_policies

POLICIES = golden_policies()
WHICH = ("struct_ops", "check")


def _diff(old: str, new: str, name: str) -> str:
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"golden/{name}",
                                      "generated", lineterm="", n=1))
    shown = "\n".join(lines[:60])
    return shown + (f"\n... ({len(lines) - 60} more diff lines)" if len(lines) > 60 else "")


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("policy", POLICIES, ids=[p.name for p in POLICIES])
def test_golden(policy, which, request):
    generated = policy.c(which)
    path = policy.golden(which)
    if request.config.getoption("--update-goldens"):
        GOLDEN_DIR.mkdir(exist_ok=True)
        if not path.exists() or path.read_bytes() != generated.encode("utf-8"):
            path.write_bytes(generated.encode("utf-8"))
    assert path.exists(), (f"no golden {path.name}; run `pytest tests/test_golden.py "
                           f"--update-goldens` and review it")
    golden = path.read_bytes().decode("utf-8")
    assert golden == generated, (f"{path.name} differs from the generated C (if intended, "
                                 f"rerun with --update-goldens):\n" + _diff(golden, generated, path.name))


def test_no_stale_goldens(request):
    expected = {p.golden(w).name for p in POLICIES for w in WHICH}
    present = {p.name for p in GOLDEN_DIR.glob("*.c")}
    stale = present - expected
    if request.config.getoption("--update-goldens"):
        for name in stale:
            (GOLDEN_DIR / name).unlink()
        stale = set()
    assert not stale, f"goldens without a policy: {sorted(stale)}"
    assert len(expected) >= 2 * 30


def test_goldens_name_no_directories():
    """Built under a bare file name, the C says nothing of the checkout's layout."""
    root = str(Path(__file__).resolve().parent.parent)
    for p in POLICIES[:8]:
        for which in WHICH:
            text = p.c(which)
            assert root not in text and "examples/" not in text and "tests/cases/" not in text


def test_output_independent_of_checked_path():
    """`source_name` fixes the name in the output: checking the same bytes as
    `examples/secrets.fpol` or as `secrets.fpol` must not change the C."""
    data = (Path(__file__).resolve().parent.parent / "examples" / "secrets.fpol").read_bytes()
    a = render(lower(check(data, "secrets.fpol").classes, source_name="secrets.fpol"))
    b = render(lower(check(data, "examples/secrets.fpol").classes, source_name="secrets.fpol"))
    assert a == b, _diff(a, b, "secrets.bpf.c")


_HASH_SCRIPT = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from policyset import golden_policies
out = {}
for p in golden_policies():
    for which in ("struct_ops", "check"):
        out[p.name + ":" + which] = hashlib.sha256(p.c(which).encode()).hexdigest()
print(json.dumps(out))
"""


def test_output_is_deterministic_across_processes():
    """Same C whatever the hash seed (no set or dict ordering leaks into the output)."""
    here = {f"{p.name}:{w}": hashlib.sha256(p.c(w).encode()).hexdigest()
            for p in POLICIES for w in WHICH}
    tests_dir = str(Path(__file__).resolve().parent)
    for seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run([sys.executable, "-c", _HASH_SCRIPT, tests_dir], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        there = json.loads(proc.stdout)
        differ = sorted(k for k in here if here[k] != there.get(k))
        assert not differ, f"PYTHONHASHSEED={seed} changes {differ}"


# --- two spellings, one output ---------------------------------------------------------

def _c_of(text: str, abi=None) -> tuple[str, str]:
    result = check(text, "same.fpol")
    assert result.ok, [f"{d.span.line}: {d.code} {d.message}" for d in result.diagnostics]
    model = lower(result.classes, abi=abi, source_name="same.fpol")
    return render(model, "struct_ops"), render(model, "check")


# The C repeats each rule's canonical text in comments, and the canonical form keeps the
# errno spelling and redundant scopes as written, so these two pairs differ in comments only.
# (what differs, spelling A, spelling B): same number of lines, rules on the same lines.
SPELLINGS = [
    ("op order", "deny write, read under /a\n", "deny read, write under /a\n"),
    ("op order, groups and ops",
     "deny mkdir, exec, lookup, delete under /a with EPERM\n",
     "deny lookup, mkdir, delete, exec under /a with EPERM\n"),
    ("repeated ops", "deny read, read, write, read under /a\n", "deny read, write under /a\n"),
    ("quoted path", 'deny write under "/a/b"\n', "deny write under /a/b\n"),
    ("escaped bytes", 'deny write under "/\\x61/b"\nallow read at "/\\x63"\n',
     "deny write under /a/b\nallow read at /c\n"),
    ("double and trailing slashes", "deny write under /a//b/\ndeny read at //c/d//\n",
     "deny write under /a/b\ndeny read at /c/d\n"),
    ("scope order", 'deny write named "*.log" under /a\n', 'deny write under /a named "*.log"\n'),
    ("scope order 2", 'deny read matching "/a/**" at /a/b under /a\n',
     'deny read under /a at /a/b matching "/a/**"\n'),
    ("split except clauses", 'deny write under /a except under /a/t except named "*.log"\n',
     'deny write under /a except under /a/t, named "*.log"\n'),
    ("except order", 'deny write under /a except named "*.log", at /a/k, under /a/t\n',
     'deny write under /a except under /a/t, at /a/k, named "*.log"\n'),
    ("clause order", "deny write with EPERM except at /a/b under /a\n",
     "deny write under /a except at /a/b with EPERM\n"),
    ("errno alias", "deny setxattr under /a with ENOTSUP\n", "deny setxattr under /a with EOPNOTSUPP\n"),
    ("redundant under", "deny write under /a under /a/b\n", "deny write under /a/b\n"),
    ("redundant repeated scope", "deny write under /a under /a\n", "deny write under /a\n"),
    ("comments and blank lines",
     "# header comment\ndeny write under /a  # why\n\n# more\naudit read under /b\n",
     "\ndeny write under /a\n\n\naudit read under /b\n"),
    ("whitespace", "deny    write ,read   under   /a\n", "deny read, write under /a\n"),
    ("continuation", "deny write \\\n  under /a\n# x\n", "deny write under /a\n\n\n"),
    ("to userspace instead", "redirect open to userspace instead under /m\n",
     "redirect open to userspace under /m\n"),
    ("default redirect instead", "default redirect to userspace instead\n",
     "default redirect to userspace\n"),
    ("CRLF line ends", "deny write under /a\r\naudit read under /b\r\n",
     "deny write under /a\naudit read under /b\n"),
    ("named quoting", 'deny read under "/a" named "x"\n', 'deny read under /a named "x"\n'),
    # LANGUAGE.md §7: a definition with one value is the path written out (more values:
    # k rules, tests/test_include.py; included files: the same there).
    ("defined path", "deny write under $d/x\ndefine d = /a\n", "deny write under /a/x\n\n"),
    ("defined glob", 'define h = /home\ndeny read matching "$h/*/.ssh/**"\n',
     '\ndeny read matching "/home/*/.ssh/**"\n'),
    ("defined in a definition", 'define a = $b/c\ndefine b = "/x y"\ndeny write under $a except at $a/t\n',
     '\n\ndeny write under "/x y/c" except at "/x y/c/t"\n'),
    # LANGUAGE.md §6: a `by` list is a set of alternatives, in any order and place.
    ("by order", "deny write under /a by uid 7, uid 5\n", "deny write under /a by uid 5, uid 7\n"),
    ("by kinds order", "deny write under /a by gid 3, uid 9-10, uid 2 with EPERM\n",
     "deny write under /a by uid 2, uid 9-10, gid 3 with EPERM\n"),
    ("by clause place", "deny write by uid 5 under /a with EPERM\nallow read under /a\n",
     "deny write under /a by uid 5 with EPERM\nallow read under /a\n"),
    ("except by order", "deny write under /a except by gid 1, uid 7, under /a/t\n",
     "deny write under /a except under /a/t, by uid 7, gid 1\n"),
    ("except by items", "deny write under /a except by uid 7 except by gid 1\n",
     "deny write under /a except by uid 7, by gid 1\n"),
    ("id spelling", "deny write under /a by uid 007, gid 5-5\n", "deny write under /a by uid 7, gid 5\n"),
]


@pytest.mark.parametrize("what, a, b", SPELLINGS,
                         ids=[s[0] if isinstance(s, tuple) else s.id for s in SPELLINGS])
def test_two_spellings_one_output(what, a, b):
    assert a.count("\n") == b.count("\n")
    for abi in ("v4", "v3"):
        (sa, ca), (sb, cb) = _c_of(a, abi), _c_of(b, abi)
        assert sa == sb, f"struct_ops C differs ({what}, abi {abi}):\n" + _diff(sa, sb, "A")
        assert ca == cb, f"check C differs ({what}, abi {abi}):\n" + _diff(ca, cb, "A")


def test_different_policies_differ():
    """The comparison above can fail: a real change of meaning changes the C."""
    for a, b in [("deny write under /a\n", "deny write under /b\n"),
                 ("deny write under /a\n", "deny write under /a with EPERM\n"),
                 ("deny write under /a\n", "deny read under /a\n"),
                 ("redirect open to userspace under /m\n",
                  "redirect open to userspace before under /m\n"),
                 ("deny write under /a\n", "\ndeny write under /a\n"),
                 ("deny write under /a\n", "deny write under /a by uid 5\n"),
                 ("deny write under /a by uid 5\n", "deny write under /a by uid 6\n"),
                 ("deny write under /a by uid 5\n", "deny write under /a by gid 5\n"),
                 ("deny write under /a by uid 5\n", "deny write under /a except by uid 5\n")]:
        assert _c_of(a) != _c_of(b), (a, b)
