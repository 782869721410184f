"""Raw states -> ClassTree: merge the states of compiler/classes.py's subset construction
that no request can tell apart (Moore partition refinement) and number the classes
breadth-first from the root (ARCHITECTURE.md §2)."""

from __future__ import annotations

from collections.abc import Iterable

from .classes import Class, ClassTree, RawState, build_raw, tables
from .decide import DecisionTable
from .paths import Glob, glob_mask
from .policy import Policy


def build(policy: Policy) -> ClassTree:
    raw = build_raw(policy)
    return minimise(policy, raw, tables(policy, raw))


def minimise(policy: Policy, raw: list[RawState], table: list[DecisionTable]) -> ClassTree:
    """Moore partition refinement (`_refine`), then renumber classes breadth-first from
    the root."""
    block, reduced_of = _refine(raw, table)

    # One representative per block, reached first breadth-first (state ids are BFS order).
    rep: dict[int, int] = {}
    for sid in range(len(raw)):
        rep.setdefault(block[sid], sid)
    order = [block[0]]  # the blocks by class number: the queue, as they are numbered in turn
    number = {block[0]: 0}
    classes: list[Class] = []
    for b in order:
        sid = rep[b]
        lits, globs, masks, blocks, default = reduced_of(sid)
        # Number the targets in the order the classes list them: literals, masks, default.
        if lits or masks:
            targets = [t for _, t in lits]
            targets += [blocks[i] for _, i in masks]
            targets.append(default)
        else:
            targets = [default]
        for t in targets:
            if t not in number:
                number[t] = len(order)
                order.append(t)
        # (positional: keywords cost a sixth of the call, once per class)
        classes.append(Class(
            len(classes), table[sid],  # id, table
            tuple([(lit, number[t]) for lit, t in lits]) if lits else (),  # literals
            globs,
            tuple([(m, number[blocks[i]]) for m, i in masks]) if masks else (),  # masks
            number[default], raw[sid].example))  # default, example
    return ClassTree(policy, tuple(classes), len(raw))


def _refine(raw: list[RawState], table: list[DecisionTable]):
    """Moore partition refinement: -> (each state's block, a function giving a state's
    transitions in terms of blocks, without entries that change nothing: its literals,
    globs, masks as (mask, index in blocks), those blocks, and its default).

    States of one core and one table (a directory and its `x.key`, `x.tmp`, ... siblings
    under the same rules) have the same transitions and label, so they are in one block
    from start to end: refinement signs groups of them, not states.

    Each round splits every block by its groups' signatures, as Moore's algorithm does,
    but signs again only the groups with a target that changed block in the last round:
    the others' signatures are still those of the current partition. A split block keeps
    its id for its largest part, so few states change block."""
    # Label each distinct table object once (most states share theirs), by value.
    label_ids: dict[DecisionTable, int] = {}
    label_of = {i: label_ids.setdefault(t, len(label_ids))
                for i, t in dict(zip(map(id, table), table)).items()}
    labels = list(map(label_of.__getitem__, map(id, table)))
    group_of: dict[tuple[int, int], int] = {}
    group = [group_of.setdefault((st.core, labels[sid]), len(group_of))
             for sid, st in enumerate(raw)]
    states: list[list[int]] = [[] for _ in group_of]
    for sid, g in enumerate(group):
        states[g].append(sid)
    shapes = _Shapes()
    by_core: dict[int, _Moves] = {}
    moves = []
    for sids in states:
        st = raw[sids[0]]
        mv = by_core.get(st.core)
        if mv is None:
            mv = by_core[st.core] = _Moves(st, shapes)
        moves.append(mv)
    block = labels  # by state
    gblock = [labels[sids[0]] for sids in states]  # by group
    members: dict[int, list[int]] = {}  # groups by block
    for g, b in enumerate(gblock):
        members.setdefault(b, []).append(g)
    sig: list = [None] * len(moves)
    # A group alone in its block is not signed, as nothing can split it: signed at the end.
    # Blocks only split, so a group alone from the start stays alone: only the others
    # are signed in the rounds, and only they are looked for when a target of theirs moves.
    dirty: Iterable[int] = [g for g, b in enumerate(gblock) if len(members[b]) > 1]
    unsigned: set[int] = set(range(len(moves))).difference(dirty)
    preds: list[list[int]] = [[] for _ in group_of]  # per group, those of them moving into it
    for g in dirty:
        for t in moves[g].reached:
            preds[group[t]].append(g)
    fresh = len(label_ids)
    while True:
        touched = set()
        for g in dirty:
            b = gblock[g]
            if len(members[b]) == 1:
                unsigned.add(g)
            else:
                sig[g] = moves[g].signature(block, shapes)
                touched.add(b)
        moved: list[int] = []
        for b in touched:
            parts: dict = {}
            for g in members[b]:
                parts.setdefault(sig[g], []).append(g)
            if len(parts) == 1:
                continue
            split = sorted(parts.values(), key=len, reverse=True)
            members[b] = split[0]
            for part in split[1:]:
                members[fresh] = part
                for g in part:
                    gblock[g] = fresh
                moved += part
                fresh += 1
        if not moved:
            break
        for g in moved:
            for sid in states[g]:
                block[sid] = gblock[g]
        dirty = {h for g in moved for h in preds[g]}

    final: dict[int, tuple] = {}  # by core: the groups of one core sign alike

    def reduced_of(sid: int) -> tuple:
        g = group[sid]
        if g in unsigned:
            core = raw[sid].core
            s = final.get(core)
            if s is None:
                s = final[core] = moves[g].signature(block, shapes)
        else:
            s = sig[g]
        shape, blocks, default, lits = s
        globs, masks = shapes.shapes[shape]
        return lits, globs, masks, blocks, default

    return block, reduced_of


class _Shapes:
    """What the glob masks of states look like once reduced, memoised: states with the
    same globs, masks and pattern of equal targets reduce alike (see _glob_plan).

    A state's signature is (shape, the blocks of its non-default mask groups, its default
    block, its literals), where a shape is the kept globs and the reduced masks grouped by
    target: equal signatures, equal reduced transitions."""

    def __init__(self) -> None:
        self.glob_ids: dict[tuple[bytes, ...], int] = {}
        self.glob_list: list[tuple[Glob, ...]] = []
        self.glob_objects: dict[int, tuple[tuple[Glob, ...], int]] = {}  # by id: (it, number)
        self.masks_of: dict[tuple[int, bytes], int] = {}  # (globs, name) -> glob_mask
        self.kinds: dict[tuple, int] = {}  # (globs, masks, targets pattern, default index)
        self.kind_list: list[tuple] = []
        self.ids: dict[tuple, int] = {}  # (kept glob texts, mask groups) -> shape id
        # kept globs, and the reduced masks as (mask, index of its group), sorted
        self.shapes: list[tuple[tuple[Glob, ...], tuple[tuple[int, int], ...]]] = []
        self.plans: dict[tuple[int, tuple], tuple] = {}
        self.plain = self.shape((), ())  # no globs kept, every name to the default

    def globs(self, globs: tuple[Glob, ...]) -> int:
        # Many states hold the very same tuple: found by identity first (the entry keeps
        # the tuple alive, so its id is not reused).
        hit = self.glob_objects.get(id(globs))
        if hit is not None:
            return hit[1]
        key = tuple([g.text for g in globs])
        i = self.glob_ids.get(key)
        if i is None:
            i = self.glob_ids[key] = len(self.glob_list)
            self.glob_list.append(globs)
        self.glob_objects[id(globs)] = (globs, i)
        return i

    def glob_mask(self, globs: int, name: bytes) -> int:
        mask = self.masks_of.get((globs, name))
        if mask is None:
            mask = self.masks_of[globs, name] = glob_mask(self.glob_list[globs], name)
        return mask

    def kind(self, key: tuple) -> int:
        k = self.kinds.get(key)
        if k is None:
            k = self.kinds[key] = len(self.kind_list)
            self.kind_list.append(key)
        return k

    def shape(self, globs: tuple[Glob, ...], groups: tuple) -> int:
        key = (tuple(g.text for g in globs), groups)
        s = self.ids.get(key)
        if s is None:
            s = self.ids[key] = len(self.shapes)
            self.shapes.append((globs, tuple(sorted(
                (pm, i) for i, pms in enumerate(groups) for pm in pms))))
        return s

    def plan(self, kind: int, pattern: tuple[int, ...]) -> tuple:
        """-> (shape, for each mask group the index of a target leading to it, the
        default's index), for states of `kind` whose targets' blocks have `pattern`."""
        key = (kind, pattern)
        plan = self.plans.get(key)
        if plan is None:
            globs_id, masks, at, default_at = self.kind_list[kind]
            globs = self.glob_list[globs_id]
            mask_pattern = [pattern[i] for i in at]
            keep, projected = _glob_plan(len(globs), masks, mask_pattern)
            part: dict[int, int] = {}  # projected mask -> its targets' pattern number
            for pm, p in zip(projected, mask_pattern):
                part.setdefault(pm, p)
            default = part.get(0, pattern[default_at])
            groups: dict[int, list[int]] = {}
            for pm in sorted(part):
                if part[pm] != default:
                    groups.setdefault(part[pm], []).append(pm)
            shape = self.shape(tuple(globs[i] for i in keep),
                               tuple(tuple(pms) for pms in groups.values()))
            plan = self.plans[key] = (shape, tuple(pattern.index(p) for p in groups),
                                      pattern.index(default))
        return plan


class _Moves:
    """A state's transitions, prepared for being signed in terms of blocks again and again
    during refinement: its distinct mask and default targets, its kind (see _Shapes), and
    its literal names with the state a name of theirs would reach without the literal
    entry (by the globs it matches)."""

    __slots__ = ("kind", "targets", "lits", "reached")

    def __init__(self, st: RawState, shapes: _Shapes):
        values = st.masks.values()
        targets = self.targets = tuple(dict.fromkeys([*values, st.default]))
        if len(targets) == 1:
            self.kind = -1  # every name goes one way: signed as plain, no kind needed
        else:
            at = tuple(map(targets.index, values))  # (few targets: index is quick)
            self.kind = shapes.kind((shapes.globs(st.globs), tuple(st.masks), at,
                                     targets.index(st.default)))
        lits: tuple[tuple[bytes, int, int], ...] = ()
        if st.literals and len(targets) == 1:
            # a name no literal lists goes there, whatever globs it matches
            other = targets[0]
            lits = tuple([(lit, t, other) for lit, t in sorted(st.literals.items())])
        elif st.literals:
            globs = shapes.globs(st.globs)
            lits = tuple([(lit, t, st.masks.get(shapes.glob_mask(globs, lit), st.default))
                          for lit, t in sorted(st.literals.items())])
        self.lits = lits
        # the states it moves to, for finding who to sign again when a block splits
        self.reached = {*targets, *(t for _, t, _ in self.lits)} if self.lits else targets

    def signature(self, block: list[int], shapes: _Shapes) -> tuple:
        lits = tuple([(lit, block[t]) for lit, t, other in self.lits if block[t] != block[other]]) \
            if self.lits else ()
        targets = self.targets
        if len(targets) == 1:
            return shapes.plain, (), block[targets[0]], lits
        blocks = list(map(block.__getitem__, targets))
        # which targets share a block: each one's first in the same block
        pattern = tuple(map(blocks.index, blocks))
        if not any(pattern):
            return shapes.plain, (), blocks[0], lits
        shape, at, default_at = shapes.plan(self.kind, pattern)
        return shape, tuple([blocks[i] for i in at]), blocks[default_at], lits


def _glob_plan(n: int, masks: list[int], pattern: list[int]) -> tuple[list[int], list[int]]:
    """Which of n globs matter, given the masks of a state and which of them lead to the
    same block (`pattern`: equal numbers, same block): drop every glob whose outcome never
    depends on it (greedy in glob order, checked exactly; masks are compared on the kept
    bits only). -> (the globs kept, each mask projected onto them)."""
    if len(set(pattern)) <= 1:
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
