"""Raw states -> ClassTree: merge the states of compiler/classes.py's subset construction
that no request can tell apart (Moore partition refinement) and number the classes
breadth-first from the root (ARCHITECTURE.md §2)."""

from __future__ import annotations

from collections import deque
from typing import Optional

from .classes import Class, ClassTree, RawState, build_raw, tables
from .decide import DecisionTable
from .paths import glob_mask
from .policy import Policy


def build(policy: Policy) -> ClassTree:
    raw = build_raw(policy)
    return minimise(policy, raw, tables(policy, raw))


def minimise(policy: Policy, raw: list[RawState], table: list[DecisionTable]) -> ClassTree:
    """Moore partition refinement (`_refine`), then renumber classes breadth-first from
    the root."""
    block, group, moves, plans = _refine(raw, table)

    # One representative per block, reached first breadth-first (state ids are BFS order).
    rep: dict[int, int] = {}
    for sid in range(len(raw)):
        rep.setdefault(block[sid], sid)
    order: list[int] = []
    number: dict[int, int] = {}
    queue = deque([block[0]])
    number[block[0]] = 0
    reduced: dict[int, tuple] = {}
    while queue:
        b = queue.popleft()
        order.append(b)
        lits, globs, masks, default = reduced[b] = moves[group[rep[b]]].reduced(block, plans)
        for t in [t for _, t in lits] + [t for _, t in masks] + [default]:
            if t not in number:
                number[t] = len(number)
                queue.append(t)
    classes = []
    for b in order:
        st = raw[rep[b]]
        lits, globs, masks, default = reduced[b]
        classes.append(Class(
            id=number[b], table=table[rep[b]],
            literals=tuple((lit, number[t]) for lit, t in lits),
            globs=globs,
            masks=tuple((m, number[t]) for m, t in masks),
            default=number[default], example=st.example))
    return ClassTree(policy, tuple(classes), len(raw))


def _refine(raw: list[RawState], table: list[DecisionTable]):
    """Moore partition refinement: per state its block. -> (blocks, each state's group,
    each group's _Moves, the glob plans memo).

    States of one core and one table (a directory and its `x.key`, `x.tmp`, ... siblings
    under the same rules) have the same transitions and label, so they are in one block
    from start to end: refinement computes one signature per such group, not per state."""
    label_ids: dict[DecisionTable, int] = {}
    labels = [label_ids.setdefault(t, len(label_ids)) for t in table]
    group_of: dict[tuple[int, int], int] = {}
    group = [group_of.setdefault((st.core, labels[sid]), len(group_of))
             for sid, st in enumerate(raw)]
    members: list[int] = [0] * len(group_of)  # a state of each group (the first)
    for sid in range(len(raw) - 1, -1, -1):
        members[group[sid]] = sid
    # What each group's literal names would do without their literal entry: it depends only
    # on the state, not on the partition, so it is worked out once (see _Moves).
    moves = [_Moves(raw[sid]) for sid in members]
    # Block ids stay stable across rounds (a block's first part keeps its id), so a group
    # whose targets' blocks did not change reuses its signature (_Moves.signature).
    gblock = [labels[sid] for sid in members]
    plans: dict = {}  # see _Moves.reduced
    block = labels
    count = len(label_ids)
    while True:
        parts: dict = {}
        kept: set[int] = set()
        fresh = count
        for g, mv in enumerate(moves):
            b = gblock[g]
            key = (b, mv.signature(block, plans))
            nid = parts.get(key)
            if nid is None:
                if b not in kept:
                    kept.add(b)
                    nid = b
                else:
                    nid, fresh = fresh, fresh + 1
                parts[key] = nid
            gblock[g] = nid
        if fresh == count:  # no block split: stable
            return block, group, moves, plans
        block = [gblock[g] for g in group]
        count = fresh


class _Moves:
    """A state's transitions, prepared for being read in terms of blocks again and again
    during refinement: literal names with the state a name of theirs would reach without
    the literal entry (by the globs it matches), and the glob masks by state."""

    __slots__ = ("st", "lits", "masks", "masks_key", "targets", "last")

    def __init__(self, st: RawState):
        self.st = st
        self.last: Optional[tuple] = None
        if not st.globs and not st.masks:
            # (name, state), or with globs (name, state, state without the literal)
            self.lits: tuple = tuple(sorted(st.literals.items()))
            self.masks = None
            return
        self.masks = tuple(st.masks.items())
        self.masks_key = (len(st.globs), tuple(st.masks))
        lits = []
        for lit, t in sorted(st.literals.items()):
            lits.append((lit, t, st.masks.get(glob_mask(st.globs, lit), st.default)))
        self.lits = tuple(lits)
        self.targets = tuple(t for _, t in self.masks) + (st.default,) + \
            tuple(x for _, t, other in self.lits for x in (t, other))

    def reduced(self, block: list[int], plans: Optional[dict] = None):
        """Transitions in terms of blocks, without entries that change nothing. `plans`
        memoises which globs matter per pattern of equal mask targets (see _glob_plan)."""
        st = self.st
        if self.masks is None:  # the common case, kept cheap: literals and a default
            default = block[st.default]
            lits = tuple((lit, block[t]) for lit, t in self.lits if block[t] != default)
            return lits, (), (), default
        blocks = [block[t] for _, t in self.masks]
        ids: dict[int, int] = {}
        pattern = tuple([ids.setdefault(b, len(ids)) for b in blocks])
        key = (self.masks_key, pattern)
        plan = plans.get(key) if plans is not None else None
        if plan is None:
            plan = _glob_plan(len(st.globs), [m for m, _ in self.masks], pattern)
            if plans is not None:
                plans[key] = plan
        keep, projected = plan
        reduced: dict[int, int] = {}
        for pm, b in zip(projected, blocks):
            reduced.setdefault(pm, b)
        default = reduced.get(0, block[st.default])
        globs = tuple(st.globs[i] for i in keep)
        reduced_masks = tuple(sorted((m, b) for m, b in reduced.items() if b != default))
        lits = tuple((lit, block[t]) for lit, t, other in self.lits if block[t] != block[other])
        return lits, globs, reduced_masks, default

    def signature(self, block: list[int], plans: Optional[dict] = None):
        """The reduced transitions as a hashable value. For a state with globs (the costly
        case) the last one is kept with the blocks of its targets, and reused while they
        stay the same."""
        if self.masks is not None:
            key = tuple(block[t] for t in self.targets)
            if self.last is not None and self.last[0] == key:
                return self.last[1]
        lits, globs, masks, default = self.reduced(block, plans)
        sig = (lits, tuple(g.text for g in globs), masks, default)
        if self.masks is not None:
            self.last = (key, sig)
        return sig


def _glob_plan(n: int, masks: list[int], pattern: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Which of n globs matter, given the masks of a state and which of them lead to the
    same block (`pattern`: equal numbers, same block): drop every glob whose outcome never
    depends on it (greedy in glob order, checked exactly; masks are compared on the kept
    bits only). -> (the globs kept, each mask projected onto them)."""
    if all(p == 0 for p in pattern):
        keep: list[int] = []  # every name the globs can tell apart goes to one block
    else:
        kept = (1 << n) - 1
        for i in range(n):
            trial = kept & ~(1 << i)
            seen: dict[int, int] = {}
            for m, p in zip(masks, pattern):
                if seen.setdefault(m & trial, p) != p:
                    break
            else:
                kept = trial
        keep = [i for i in range(n) if kept >> i & 1]
    projected = [sum(1 << j for j, i in enumerate(keep) if m >> i & 1) for m in masks]
    return keep, projected


__all__ = ["build", "minimise"]
