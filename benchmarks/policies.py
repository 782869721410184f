"""The generated policies the benchmarks (and the scale test) use."""


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
