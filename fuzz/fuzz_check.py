"""Coverage-guided fuzzing of the front end: bytes -> check -> fmt.

Every input, whatever its bytes: `check` returns (never raises) well-formed diagnostics
whose spans lie inside the input and that render as text and JSON; and if the input
parses, its `fmt` output parses, formats to itself (a fixpoint), and checks with the same
diagnostic codes. The oracles are tests/oracles.py, the ones the hypothesis tests use.

    python3 fuzz/fuzz_check.py -max_total_time=300
"""


import atheris

from common import policy_seeds, run

with atheris.instrument_imports(include=["fpol", "lark"]):
    from oracles import assert_fmt_fixpoint, assert_sane, assert_spans_inside


def test_one_input(data: bytes) -> None:
    result = assert_sane(data)
    assert_spans_inside(result)
    assert_fmt_fixpoint(data)


if __name__ == "__main__":
    run("check", test_one_input, policy_seeds, dictionary=True)
