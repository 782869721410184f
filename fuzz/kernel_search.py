"""A time-boxed search for disagreements between the kernel engine and the evaluator.

Like tests/test_fuzz.py's kernel property (the same strategies and the same `agree`), but
it keeps going after a disagreement and counts: generated policies that check clean are
compiled, loaded in this kernel, and 100 generated requests each are decided by both.
Every disagreement is printed; the exit status is 1 if there was any.

    python3 fuzz/kernel_search.py 420        # seconds; needs root, clang, BPF
"""

import collections
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fpol.compiler.driver import check  # noqa: E402
from fpol.compiler.evaluate import Evaluator  # noqa: E402
from oracles import agree, engine_for  # noqa: E402
from strategies import policies, requests  # noqa: E402


def main(seconds: float) -> int:
    warnings.simplefilter("ignore")  # hypothesis on the repr of the example it stops at
    stats, others = collections.Counter(), []
    deadline = time.time() + seconds

    @settings(max_examples=10 ** 6, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(policies(min_rules=1), st.lists(requests(max_depth=6), min_size=100, max_size=100))
    def search(text, reqs):
        if time.time() > deadline:
            raise TimeoutError
        checked = check(text.encode("utf-8", "surrogatepass"), "gen.fpol")
        stats["policies"] += 1
        if not checked.ok:
            return
        stats["clean"] += 1
        evaluator = Evaluator(checked.policy)
        with engine_for(checked) as engine:
            for req in reqs:
                expected, got = evaluator.evaluate(req), engine.evaluate(req)
                verdict = agree(expected, got)
                stats[verdict] += 1
                if verdict != "DIFFERENT":
                    continue
                others.append(text)
                print(f"DIFFERENT {text!r}\n  {req}\n  evaluator "
                      f"{expected.decision.short()}, kernel {got.decision.short()}", flush=True)

    try:
        search()
    except TimeoutError:
        pass
    for key, value in sorted(stats.items()):
        print(f"{key}: {value}")
    print(f"disagreements: {len(others)} (in {len(set(others))} policies)")
    return 1 if others else 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 300))
