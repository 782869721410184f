"""`fpol diff` (compiler/diff.py): the exact difference of two policies' decisions.

Properties (hypothesis): two policies drawn from one pool of rules (so they are often
equivalent or nearly so) are reported equivalent exactly when the reference evaluator
agrees on every generated request; every reported difference is confirmed by the
evaluator on both policies (and by the request `fpol explain` would judge); diff(A, B)
and diff(B, A) report the same places. Goldens: the examples against edited versions
(tests/golden/diff/; `pytest tests/test_diff.py --update-goldens` rewrites them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fpol.cli import main
from fpol.compiler.diff import subject_pairs, diff, effect
from fpol.compiler.product import product_walk
from fpol.compiler.driver import check
from fpol.compiler.evaluate import Evaluator, Request
from fpol.compiler.fmt import format_policy
from fpol.compiler.parser import parse

from strategies import REQUEST_NAMES, headers, requests, rules

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "diff"
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _checked(text: str, name: str):
    result = check(text, name)
    return result if result.ok else None


@st.composite
def policy_pairs(draw):
    """Two policies over one pool of rules: the same or different subsets, reordered,
    with the same headers or (rarely) different ones."""
    head = draw(headers())
    pool = draw(st.lists(rules(), min_size=1, max_size=5))
    a = draw(st.lists(st.sampled_from(pool), max_size=5))
    if draw(st.booleans()):
        b = draw(st.permutations(a))  # a reordering: equivalent
    else:
        b = draw(st.lists(st.sampled_from(pool), max_size=5))
    head_b = head if draw(st.integers(0, 4)) else draw(headers())
    return "\n".join(head + a) + "\n", "\n".join(head_b + list(b)) + "\n"


def _same(ev_a: Evaluator, ev_b: Evaluator, req) -> bool:
    va, vb = ev_a.evaluate(req), ev_b.evaluate(req)
    return effect(va.decision) == effect(vb.decision)


# A case-insensitive policy against a case-sensitive one: only `/Abc` (both sides name
# `a*`, the sensitive side does not fold) and `/aB` (the sensitive side lists three of the
# four spellings of `ab`) tell them apart; fpol diff once called both pairs equivalent.
FOLDED_GLOB = ('names case-insensitive\ndeny read matching "/a*"\n', 'deny read matching "/a*"\n')
FOLDED_LITERAL = ("names case-insensitive\ndeny read at /ab\n",
                  "deny read at /ab\ndeny read at /AB\ndeny read at /Ab\n")


@SETTINGS
@given(policy_pairs(), st.lists(requests(max_depth=4), min_size=20, max_size=20))
@example(FOLDED_GLOB, [Request("read", (b"Abc",))])
@example(FOLDED_LITERAL, [Request("read", (b"aB",))])
def test_equivalent_exactly_when_the_evaluator_agrees(pair, reqs):
    a, b = _checked(pair[0], "a.fpol"), _checked(pair[1], "b.fpol")
    if a is None or b is None:
        return
    result = diff(a.classes, b.classes)
    ev_a, ev_b = Evaluator(a.policy), Evaluator(b.policy)
    if result.equivalent:
        for req in reqs:
            assert _same(ev_a, ev_b, req), req
    # Every reported difference is real, on both sides, for the atom and for the request
    # `fpol explain` would judge.
    for d in result.differences:
        # ... for every requester it names (with subject conditions), or uid 0, gid 0.
        for uid, gid in d.requesters or ((0, 0),):
            for atom in d.atoms:
                da = ev_a.decision_at(d.path, atom, uid, gid)
                db = ev_b.decision_at(d.path, atom, uid, gid)
                assert effect(da) == effect(d.old) and effect(db) == effect(d.new), \
                    (d.path, atom, uid, gid)
                assert effect(da) != effect(db)
        req, end = d.request()
        if end == "object":
            va, vb = ev_a.evaluate(req), ev_b.evaluate(req)
            assert effect(va.decision) == effect(d.old) and effect(vb.decision) == effect(d.new)
            assert va.decision.rules == d.old.rules and vb.decision.rules == d.new.rules


@SETTINGS
@given(policy_pairs())
def test_diff_is_symmetric(pair):
    a, b = _checked(pair[0], "a.fpol"), _checked(pair[1], "b.fpol")
    if a is None or b is None:
        return
    ab, ba = diff(a.classes, b.classes), diff(b.classes, a.classes)
    assert ab.equivalent == ba.equivalent
    assert [(d.path, d.atoms, effect(d.old), effect(d.new)) for d in ab.differences] == \
        [(d.path, d.atoms, effect(d.new), effect(d.old)) for d in ba.differences]
    assert ab.groups == ba.groups


@SETTINGS
@given(policy_pairs())
def test_a_difference_found_by_sampling_is_reported(pair):
    """The converse on the paths the walk itself reaches: wherever the two class tables
    differ for an atom, the evaluator differs there too, and diff reports that place."""
    a, b = _checked(pair[0], "a.fpol"), _checked(pair[1], "b.fpol")
    if a is None or b is None:
        return
    result = diff(a.classes, b.classes)
    places = {d.path for d in result.differences}
    pairs = subject_pairs(a.classes, b.classes)  # who is asking, cut at both policies' bounds
    for path, ca, cb in product_walk(a.classes, b.classes):
        if any(effect(x) != effect(y) for sa, sb, _, _ in pairs
               for x, y in zip(ca.table.for_subject(sa), cb.table.for_subject(sb))):
            assert path in places


@SETTINGS
@given(st.lists(rules(), max_size=5), headers())
def test_reformatted_and_reordered_policies_are_equivalent(rule_lines, head):
    text = "\n".join(head + rule_lines) + "\n"
    a = _checked(text, "a.fpol")
    if a is None:
        return
    tree, _, _ = parse(text, "a.fpol")
    b = _checked(format_policy(tree), "b.fpol")
    c = _checked("\n".join(head + rule_lines[::-1]) + "\n", "c.fpol")
    assert diff(a.classes, b.classes).equivalent
    assert diff(a.classes, c.classes).equivalent


def test_added_deny_is_reported_with_its_rule():
    a = check("deny write under /a\n", "old.fpol")
    b = check("deny write under /a\ndeny read under /a/k with EPERM\n", "new.fpol")
    result = diff(a.classes, b.classes)
    assert {d.path for d in result.differences} == {(b"a", b"k")}
    assert list(result.groups) == ["read", "write", "create", "exec"]
    by_atom = {a: d for d in result.differences for a in d.atoms}
    assert by_atom["read"].old.kind == "allow" and by_atom["read"].new.errno == "EPERM"
    # Reading and writing: the more specific deny's errno now wins.
    assert by_atom["open:rw"].old.errno == "EACCES" and by_atom["open:rw"].new.errno == "EPERM"
    assert "write" not in by_atom


def test_a_difference_only_other_names_than_a_literal_reach():
    """`?` matches the literal `x` too: the names that take the glob's way must be tried
    with a name other than `x` (once `fpol diff` tried `x` and called these equivalent)."""
    a = check("deny read at /x/f\n", "a.fpol")
    b = check('deny read at /x/f\ndeny read matching "/?/secret" except under /x\n', "b.fpol")
    result = diff(a.classes, b.classes)
    assert not result.equivalent
    assert {d.path for d in result.differences} == {(b"y", b"secret")}


def _spellings(name: bytes) -> set[bytes]:
    out = {b""}
    for byte in name:
        ch = bytes([byte])
        out = {w + c for w in out for c in {ch, ch.lower(), ch.upper()}}
    return out


# Every spelling of the generators' short names, and the names themselves.
SPELLINGS = sorted({s for n in REQUEST_NAMES if len(n) <= 6 for s in _spellings(n)}
                   | set(REQUEST_NAMES))


@SETTINGS
@given(st.lists(rules(), min_size=1, max_size=4), headers())
@example(['deny read matching "/a*"'], [])
@example(["deny read at /ab", "deny read at /AB", "deny read at /Ab"], [])
def test_case_insensitive_against_sensitive_is_exact(rule_lines, head):
    """The same rules with and without `names case-insensitive`: where diff calls them
    equivalent, both trees decide alike at every spelling of every short name the
    generators use (and one level below it); where it reports a place, they differ there."""
    head = [h for h in head if not h.startswith("names")]
    body = "\n".join(head + rule_lines) + "\n"
    a = _checked("names case-insensitive\n" + body, "a.fpol")
    b = _checked(body, "b.fpol")
    if a is None or b is None:
        return
    result = diff(a.classes, b.classes)
    pairs = subject_pairs(a.classes, b.classes)

    def differ(path) -> bool:
        ca, cb = a.classes.classify(path), b.classes.classify(path)
        return any(effect(x) != effect(y) for sa, sb, _, _ in pairs
                   for x, y in zip(ca.table.for_subject(sa), cb.table.for_subject(sb)))

    for d in result.differences:
        assert differ(d.path), d.path
    if result.equivalent:
        for name in SPELLINGS:
            assert not differ((name,)), name
            assert not differ((name, name.swapcase())), name


def test_case_insensitive_against_sensitive_globs_and_spellings():
    """What only a spelling neither policy wrote reaches (see FOLDED_GLOB, FOLDED_LITERAL)."""
    for (old, new), place in ((FOLDED_GLOB, (b"A",)), (FOLDED_LITERAL, (b"aB",))):
        a, b = check(old, "a.fpol"), check(new, "b.fpol")
        for x, y in ((a, b), (b, a)):
            result = diff(x.classes, y.classes)
            assert not result.equivalent
            assert {d.path for d in result.differences} == {place}
        assert Evaluator(a.policy).decision_at(place, "read").kind == "deny"
        assert Evaluator(b.policy).decision_at(place, "read").kind == "allow"


def test_case_insensitive_against_sensitive_many_literals():
    """The search for the names that tell the two apart is bounded by its glob states, not
    by the literals' length: 6,000 literals of 12 bytes at one level (54,000 prefixes)
    compare in seconds."""
    rules = "".join(f"deny read at /{i * 2654435761 % 10**12:012d}\n" for i in range(6000))
    a = check("names case-insensitive\n" + rules + 'deny write matching "/A*"\n', "a.fpol")
    b = check(rules + 'deny write matching "/a*"\n', "b.fpol")
    result = diff(a.classes, b.classes)
    assert {d.path for d in result.differences} == {(b"A",)}


def test_case_insensitive_against_sensitive():
    a = check("names case-insensitive\ndeny write under /Data\n", "a.fpol")
    b = check("deny write under /data\n", "b.fpol")
    result = diff(a.classes, b.classes)
    places = {d.path for d in result.differences}
    assert (b"DATA",) in places and (b"data",) not in places


def test_spellings_are_equivalent_through_includes_and_definitions(tmp_path):
    (tmp_path / "inc.fpol").write_text("deny write under /home/a/.ssh\n")
    (tmp_path / "a.fpol").write_text('include "inc.fpol"\n')
    (tmp_path / "b.fpol").write_text("define h = /home/a\ndeny write under $h/.ssh\n")
    assert main(["diff", str(tmp_path / "a.fpol"), str(tmp_path / "b.fpol")]) == 0


# --- the command -----------------------------------------------------------------------

def test_cli_exit_codes_and_json(tmp_path, capsys):
    (tmp_path / "a.fpol").write_text("deny write under /a\n")
    (tmp_path / "b.fpol").write_text("deny write, read under /a\n")
    (tmp_path / "bad.fpol").write_text("deny wrte under /a\n")
    a, b, bad = (str(tmp_path / n) for n in ("a.fpol", "b.fpol", "bad.fpol"))
    assert main(["diff", a, a]) == 0
    assert capsys.readouterr().out.startswith("equivalent: ")
    assert main(["diff", "--format", "json", a, b]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["equivalent"] is False and set(out) >= {"differences", "summary", "groups"}
    first = out["differences"][0]
    assert first["path"] == "/a" and first["old"]["decision"] == "allow"
    assert first["new"]["rule"] == {"file": b, "line": 1, "text": "deny read, write under /a"}
    assert main(["diff", a, bad]) == 2
    assert "error[FP003]" in capsys.readouterr().err
    assert main(["diff", a, str(tmp_path / "missing.fpol")]) == 2
    assert main(["diff", "--limit", "0", a, b]) == 2
    with pytest.raises(SystemExit) as e:
        main(["diff", a])
    assert e.value.code == 2


def test_limit(tmp_path, capsys):
    (tmp_path / "a.fpol").write_text("")
    (tmp_path / "b.fpol").write_text("deny write under /a\ndeny read under /b\ndeny list at /c\n")
    assert main(["diff", "--limit", "1", str(tmp_path / "a.fpol"), str(tmp_path / "b.fpol")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[-1].endswith("1 shown (--limit)")


# --- goldens: the examples against edited versions ---------------------------------------

EDITS = [
    ("home-known-hosts", "home.fpol",
     'deny write matching "/home/*/.ssh/**" except named "known_hosts*" with EPERM',
     'deny write matching "/home/*/.ssh/**" with EPERM'),
    ("secrets-list", "secrets.fpol", "deny list at /secret/keys", "deny list under /secret/keys"),
    ("uploads-reordered", "uploads.fpol", None, None),
    ("complain-enforce", "complain.fpol", "mode complain", "mode enforce"),
    ("android-default", "android-media.fpol", None, "deny write under /Android/obb with EROFS"),
]


@pytest.mark.parametrize("name, example, old, new", EDITS, ids=[e[0] for e in EDITS])
def test_diff_goldens(name, example, old, new, tmp_path, request, capsys, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path / "examples")
    text = Path(example).read_text()
    if old is None and new is None:  # reorder the rules: equivalent
        lines = text.splitlines()
        rule_lines = [l for l in lines if l.startswith(("deny", "allow", "audit", "redirect"))]
        edited = "\n".join([l for l in lines if l not in rule_lines] + rule_lines[::-1]) + "\n"
    elif old is None:
        edited = text + new + "\n"
    else:
        assert old in text
        edited = text.replace(old, new)
    Path("edited.fpol").write_text(edited)
    outputs = {}
    for fmt in ("text", "json"):
        status = main(["diff", "--format", fmt, "--limit", "6", example, "edited.fpol"])
        outputs[fmt] = capsys.readouterr().out
        assert status == (0 if old is None and new is None else 1)
    for fmt, ext in (("text", "txt"), ("json", "json")):
        path = GOLDEN / f"{name}.{ext}"
        if request.config.getoption("--update-goldens"):
            GOLDEN.mkdir(parents=True, exist_ok=True)
            path.write_text(outputs[fmt])
        assert path.exists(), f"no golden {path}; run with --update-goldens"
        assert outputs[fmt] == path.read_text(), f"{path.name} differs"
