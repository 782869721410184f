"""What the atheris harnesses share: imports from tests/, seed corpora, and the run.

Each harness is run as a script:

    python3 fuzz/fuzz_check.py [libFuzzer flags] [CORPUS_DIR...]

Without a corpus directory the harness uses out/fuzz/<name>/ (created, then seeded from
examples/ and tests/cases/ when empty); libFuzzer adds the inputs that find new coverage
there, so a later run starts where the last one stopped. Crashes are written to
out/fuzz/<name>-crash-* (`-artifact_prefix`). docs/fuzzing.md has the commands and results.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # oracles.py, strategies.py


def policy_files() -> list[str]:
    return sorted(glob.glob(os.path.join(ROOT, "examples", "*.fpol")) +
                  glob.glob(os.path.join(ROOT, "tests", "cases", "*.fpol")))


def policy_seeds() -> list[bytes]:
    out = []
    for path in policy_files():
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def filler(label: bytes, n: int) -> bytes:
    """`n` fixed pseudo-random bytes (seeds must be the same on every run)."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(label + counter.to_bytes(4, "little")).digest()
        counter += 1
    return out[:n]


DICTIONARY = os.path.join(ROOT, "fuzz", "fpol.dict")


def run(name: str, test_one_input, seeds, dictionary: bool = False) -> None:
    """Seed the default corpus if needed and hand over to libFuzzer. `dictionary` adds
    `-dict=fuzz/fpol.dict` (the language's words) unless a -dict is given."""
    import atheris

    args = list(sys.argv)
    if dictionary and not any(a.startswith("-dict=") for a in args):
        args.insert(1, f"-dict={DICTIONARY}")
    positional = [a for a in args[1:] if not a.startswith("-")]
    if not positional:
        corpus = os.path.join(ROOT, "out", "fuzz", name)
        os.makedirs(corpus, exist_ok=True)
        if not os.listdir(corpus):
            for data in seeds():
                key = hashlib.sha1(data).hexdigest()
                with open(os.path.join(corpus, f"seed-{key}"), "wb") as f:
                    f.write(data)
        args.append(corpus)
    if not any(a.startswith("-artifact_prefix=") for a in args):
        crash_dir = os.path.join(ROOT, "out", "fuzz")
        os.makedirs(crash_dir, exist_ok=True)
        args.insert(1, f"-artifact_prefix={crash_dir}/{name}-")
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
