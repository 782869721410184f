"""The compile stages pause Python's cyclic GC (compiler/driver.py no_collections) and
leave it as they found it: a daemon or language server that compiles on a reload keeps
collecting afterwards, and an error inside a stage does not leave it off."""

from __future__ import annotations

import gc

import pytest

from fpol.compiler.driver import check, no_collections
from fpol.compiler.lower import lower
from fpol.compiler.render import render

POLICY = b'default allow\ndeny write under /secret\ndeny create named "*.tmp" under /data\n'


def test_a_compile_leaves_the_collector_on():
    assert gc.isenabled()
    seen = []

    class Probe:
        def __init__(self):
            seen.append(gc.isenabled())

    checked = check(POLICY, "p.fpol").require()
    model = lower(checked.classes)
    render(model, "check")
    render(model)
    with no_collections():
        Probe()
    Probe()
    assert gc.isenabled() and seen == [False, True]


def test_an_error_inside_a_stage_turns_it_back_on():
    with pytest.raises(RuntimeError):
        with no_collections():
            assert not gc.isenabled()
            raise RuntimeError("stage failed")
    assert gc.isenabled()


def test_a_collector_already_off_stays_off():
    gc.disable()
    try:
        with no_collections():
            pass
        check(POLICY, "p.fpol").require()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_what_a_stage_made_is_collectable_afterwards():
    """The pause ends by moving the stage's objects to the oldest generation (freeze, then
    unfreeze): none stays frozen, and cyclic garbage among them is still collected."""
    import weakref

    class Node:
        pass

    with no_collections():
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
        gone = weakref.ref(a)
        del a, b
    assert gc.get_freeze_count() == 0
    assert gone() is not None  # not collected young
    gc.collect()
    assert gone() is None
