"""compiler/render.py squeezes the runs of blank lines template control lines leave behind,
but not inside the big tables it writes in Python and hands the templates as text: those
must have no run inside, and squeezing around them must give the C squeezing all of it
would (test_golden.py pins that C byte for byte).
"""

from __future__ import annotations

import random

import pytest

from fpol.compiler import render as R
from fpol.compiler.lower import lower
from policyset import golden_policies

POLICIES = golden_policies()


@pytest.mark.parametrize("credentials", [None, "kernel", "daemon"])
@pytest.mark.parametrize("policy", POLICIES, ids=[p.name for p in POLICIES])
def test_tables_have_no_blank_line_runs(policy, credentials):
    model = lower(policy.checked().classes, source_name=policy.file_name, credentials=credentials)
    tables = {**R._logic_tables(model), **R._struct_ops_tables(model)[0]}
    for name, text in tables.items():
        assert "\n\n\n" not in text, name
    for which in ("struct_ops", "check"):
        assert "\n\n\n" not in R.render(model, which)


def test_squeezing_around_clean_chunks_is_squeezing_the_whole():
    rng = random.Random(13)
    for _ in range(5000):
        chunks = ["".join(rng.choice("\n\nx") for _ in range(rng.randint(0, 7)))
                  for _ in range(rng.randint(0, 8))]
        clean = [c for c in chunks if "\n\n\n" not in c and rng.random() < 0.6]
        whole = R._squeeze_blank_lines("".join(chunks))
        assert R._squeeze_around(iter(chunks), clean) == whole, chunks
