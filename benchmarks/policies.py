"""The generated policies the benchmarks (and the scale test) use.

Two families:
- `policy_text(n)`: the benchmark shape, n rules over distinct trees, four kinds in turn;
- `realistic_text(n, seed)`: policies shaped like real ones (issue 13): rules drawn at
  random over a small vocabulary of directory words, paths 1-5 components deep that
  overlap freely, `named` and `matching` globs and redirects. Seeded: the same n and
  seed give the same text.
"""

import random


def policy_text(n: int) -> str:
    """n rules over distinct trees, four kinds in turn (deterministic)."""
    lines = [f"policy b{n}"]
    for i in range(n):
        kind = i % 4
        if kind == 0:
            lines.append(f"deny write under /srv/s{i}/data with EPERM")
        elif kind == 1:
            lines.append(f"deny read under /home/u{i}/private")
        elif kind == 2:
            lines.append(f"audit read under /var/log/l{i}")
        else:
            lines.append(f"deny all under /etc/e{i} with EROFS")
    return "\n".join(lines) + "\n"


WORDS = ("app", "data", "etc", "var", "home", "srv", "cache", "logs", "keys", "media",
         "opt", "tmp", "lib", "run", "backup", "share", "config", "public", "private", "users")
OPS = ("write", "read", "create", "delete", "all", "list, stat", "read, write")
EXTS = ("key", "pem", "tmp", "log", "bak", "swp", "db", "conf", "so", "pyc")


def _word(rng: random.Random) -> str:
    """A directory word, most with a numeric suffix 0-50."""
    w = rng.choice(WORDS)
    return w + str(rng.randint(0, 50)) if rng.random() < 0.8 else w


def _path(rng: random.Random, lo: int = 1, hi: int = 5) -> str:
    return "/" + "/".join(_word(rng) for _ in range(rng.randint(lo, hi)))


def realistic_text(n: int, seed: int = 13) -> str:
    """n rules shaped like real policies: 55% `deny OPS under PATH`, 15% `deny create
    named "*.EXT" under PATH`, 10% `audit OPS under PATH`, 10% `deny OPS matching
    "PATH/*/WORD/**"`, 10% `redirect lookup to userspace under PATH`; default allow."""
    rng = random.Random(seed * 1_000_003 + n)
    lines = [f"policy r{n}", "default allow"]
    for _ in range(n):
        x = rng.random()
        if x < 0.55:
            lines.append(f"deny {rng.choice(OPS)} under {_path(rng)}")
        elif x < 0.70:
            lines.append(f'deny create named "*.{rng.choice(EXTS)}" under {_path(rng)}')
        elif x < 0.80:
            lines.append(f"audit {rng.choice(OPS)} under {_path(rng)}")
        elif x < 0.90:
            lines.append(f'deny {rng.choice(OPS)} matching "{_path(rng, 1, 3)}/*/{_word(rng)}/**"')
        else:
            lines.append(f"redirect lookup to userspace under {_path(rng)}")
    return "\n".join(lines) + "\n"
