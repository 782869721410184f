"""Policy -> ClassTree: the automaton over path components (ARCHITECTURE.md §2).

Every scope term's patterns are run together as one NFA over components; the
subset construction gives states ("classes") that know exactly which terms hold
at a node, hence which rules match, hence a decision per atom. A class moves to
a child class by the child's name: literal names first, then the set of name
globs the name matches (a bitmask; only masks some real name can produce are
built — the product construction), then the default. Classes with the same
decisions and the same transitions are merged by compiler/minimise.py.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Optional

from . import ops
from .decide import Decision, DecisionRow, DecisionTable, atom_kinds, kind_decider
from .paths import ANY, Glob, TooManyGlobStates, glob_combinations, glob_mask
from .policy import Policy, Rule
from .errors import FpolError
from .automaton import (Holding, anchors_touched, closure as _closure, collect as _collect,
                        excepts_hit, holder)
from .subjects import Partition, partition

# Bounds that keep construction memory-safe on pathological policies (FP026).
MAX_STATES = 200_000
_EMPTY: frozenset = frozenset()
_HASH = attrgetter("_hash")  # a decision's hash once made (decide.Decision.__hash__)


class TooComplex(FpolError):
    def __init__(self, message: str, rule: Optional[Rule] = None):
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class Class:
    id: int
    table: DecisionTable  # one decision per (subject class, atom): see decide.DecisionTable
    literals: tuple[tuple[bytes, int], ...]  # exact child names -> class, sorted
    globs: tuple[Glob, ...]  # name globs tested for other names
    masks: tuple[tuple[int, int], ...]  # (bitmask over globs, class), sorted
    default: int  # class of a name that matches no literal and no glob
    example: bytes  # a path that reaches this class
    if TYPE_CHECKING:  # set once by __post_init__; not fields
        @property
        def _by_name(self) -> dict[bytes, int]: ...
        @property
        def _by_other(self) -> dict[bytes, int]: ...

    def __post_init__(self):
        object.__setattr__(self, "_by_name", dict(self.literals))
        # Some names no literal lists, by the class they lead to: lowering asks the same
        # few names (one per glob combination) again and again.
        object.__setattr__(self, "_by_other", {})

    def decision(self, atom: str, subject: int) -> Decision:
        """The decision for `atom` made by a requester of subject class `subject`."""
        return self.table.at(atom, subject)

    def decisions(self, atom: str) -> list[Decision]:
        """The decision for `atom`, for every subject class."""
        return self.table.decisions(atom)

    def child(self, name: bytes, fold: bool) -> int:
        key = name.lower() if fold else name
        target = self._by_name.get(key)
        if target is not None:
            return target
        if not self.globs:
            return self.default
        target = self._by_other.get(key)
        if target is None:
            target = dict(self.masks).get(glob_mask(self.globs, key), self.default)
            if len(self._by_other) < 256:  # bounded: a running daemon asks any name
                self._by_other[key] = target
        return target


@dataclass(frozen=True)
class ClassTree:
    policy: Policy
    classes: tuple[Class, ...]  # classes[0] is the root
    unminimised: int  # class count before merging
    # The subject classes the tables are indexed by, when not the policy's own (a tree
    # realised for a target that cannot tell requesters apart has one: subjects.py).
    partition: Optional[Partition] = None

    @property
    def subjects(self) -> Partition:
        """Who is asking, in the classes the policy's rules tell apart (compiler/subjects.py)."""
        return self.partition if self.partition is not None else partition(self.policy)

    def classify(self, comps: tuple[bytes, ...]) -> Class:
        c = self.classes[0]
        for name in comps:
            c = self.classes[c.child(name, self.policy.case_insensitive)]
        return c

    def dump(self) -> str:
        """A readable listing (`fpol compile --emit classes`)."""
        from .view import cache_rule, describe_cache  # the daemon's view of the same tables

        p = self.policy
        out = [f"# {p.file}: {len(self.classes)} classes ({self.unminimised} before minimisation)"]
        subjects = self.subjects
        if len(subjects) > 1:
            out.append(f"# {len(subjects)} subject classes (who is asking):")
            for s in range(len(subjects)):
                out.append(f"#   subject {s}: {subjects.describe(s)}")
        for c in self.classes:
            out.append(f"class {c.id}  e.g. {_show(c.example)}")
            out.append("  " + describe_cache(cache_rule(c.table)))
            for line in _table_lines(p, c):
                out.append("  " + line)
            for lit, target in c.literals:
                out.append(f"  name {_show(lit)!r} -> class {target}")
            for mask, target in c.masks:
                names = " & ".join(_show(g.text) for i, g in enumerate(c.globs) if mask >> i & 1)
                out.append(f"  names matching {names or '(no glob)'} -> class {target}")
            out.append(f"  other names -> class {c.default}")
        return "\n".join(out) + "\n"

    def dot(self) -> str:
        """A Graphviz digraph of the classes (`fpol compile --emit dot`)."""
        out = ["digraph classes {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
        for c in self.classes:
            label = f"class {c.id}\\n" + "\\n".join(
                _esc(line) for line in _table_lines(self.policy, c, width=40))
            out.append(f'  c{c.id} [label="{label}"];')
        for c in self.classes:
            edges: dict[int, list[str]] = {}
            for lit, target in c.literals:
                edges.setdefault(target, []).append(_show(lit))
            for mask, target in c.masks:
                edges.setdefault(target, []).append(
                    " & ".join(_show(g.text) for i, g in enumerate(c.globs) if mask >> i & 1))
            edges.setdefault(c.default, []).append("*other*")
            for target, names in sorted(edges.items()):
                label = _esc(", ".join(names))
                if len(label) > 60:
                    label = label[:57] + "..."
                out.append(f'  c{c.id} -> c{target} [label="{label}"];')
        out.append("}")
        return "\n".join(out) + "\n"


def _show(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _table_lines(policy: Policy, c: Class, width: int = 0) -> list[str]:
    """Group atoms by decision: `deny EACCES (line 3): open:w, open:rw, ...`; where the
    decisions depend on who is asking, one group of lines per subject class."""
    if c.table.uniform():
        return _subject_lines(policy, c.table.for_subject(0), width)
    alike: dict[tuple[Decision, ...], list[int]] = {}  # subject classes decided alike
    for s, table in enumerate(c.table.per_subject()):
        alike.setdefault(table, []).append(s)
    lines = []
    for table, subjects in alike.items():
        lines.append(f"subject{'s' if len(subjects) > 1 else ''} {', '.join(map(str, subjects))}:")
        lines += ["  " + line for line in _subject_lines(policy, table, width)]
    return lines


def _subject_lines(policy: Policy, table: tuple[Decision, ...], width: int) -> list[str]:
    groups: dict[Decision, list[str]] = {}
    for atom, d in zip(ops.ATOMS, table):
        groups.setdefault(d, []).append(atom)
    lines = []
    for d, atoms in groups.items():
        who = ", ".join(f"line {policy.rules[i].line}" for i in d.rules) or "default"
        if d.audit_rules:
            who += "; audit " + ", ".join(f"line {policy.rules[i].line}" for i in d.audit_rules)
        names = ops.compress_atoms(atoms)
        if width and len(names) > width:
            names = names[:width - 3] + "..."
        lines.append(f"{d.short()} ({who}): {names}")
    return lines


# --- construction --------------------------------------------------------------------

@dataclass
class RawState:
    """A subset-construction state before minimisation (used by lint as well)."""

    positions: tuple  # (sticky set id, the other positions): see build_raw
    literals: dict  # bytes -> state id
    globs: tuple
    masks: dict  # mask -> state id
    default: int
    example: bytes
    # States with one core have the very same transitions (see build_raw): the core's number.
    core: int
    holding: Holding  # the rules holding at the node
    # (rule index, except term index) of the except terms that hold at the node in a rule
    # whose scope terms all do (automaton.excepts_hit): lint's FP103 looks for those never hit
    excepts_hit: frozenset


_mask_cache: dict[tuple, dict[int, bytes]] = {}


def realisable_masks(globs: tuple[Glob, ...]) -> dict[int, bytes]:
    """Which sets of globs some single non-empty name matches, exactly (product
    construction), each with such a name. Memoised: the same few globs recur at most
    states of a large policy."""
    if not globs:
        return {0: b"..."}
    key = tuple(g.text for g in globs)
    cached = _mask_cache.get(key)
    if cached is None:
        try:
            cached = _mask_cache[key] = dict(sorted(glob_combinations(list(key)).items()))
        except TooManyGlobStates as e:
            raise TooComplex(str(e)) from None
    return cached


def _trailing_any(pattern: tuple) -> int:
    """Where the run of `**` parts ending the pattern starts."""
    k = len(pattern)
    while k > 0 and pattern[k - 1] is ANY:
        k -= 1
    return k


def _inert(globs: tuple, end_anchors: dict, own: frozenset) -> tuple[int, dict, frozenset]:
    """Of a state's globs, those that only end floating patterns (`end_anchors`; no
    position of the state moves by them, `own`): as bits; for each position where some of
    their terms can change the rules holding, the bits of those; and all those positions."""
    bits = 0
    bits_at: dict[tuple, int] = {}
    for i, g in enumerate(globs):
        anchors = end_anchors.get(g)
        if anchors is not None and g not in own:
            bits |= 1 << i
            for a in anchors:
                bits_at[a] = bits_at.get(a, 0) | 1 << i
    return bits, bits_at, frozenset(bits_at)


def build_raw(policy: Policy) -> list[RawState]:
    """The subset construction. State 0 is the root.

    Positions of patterns that start with `**` and have matched only `**` so far
    ("floating": every `named` pattern, `matching "/**/x"`) are in every state. They
    are left out of the states' keys and their transitions are worked out once, so
    a policy with many `named` rules does not pay for them at every state. A floating
    glob that ends its patterns (`named "*.key"`) only makes a name accept more terms,
    which changes nothing below most states: its masks go where the same mask without
    it does, unless the state holds an anchor of a rule those terms belong to.

    (Long on purpose: one algorithm whose interned sets and closures share its locals;
    split, they would be passed around or rebuilt at every state.)"""
    pats = _collect(policy)
    parts = pats.parts
    at_any = pats.at_any
    start = _closure({(pid, 0) for pid in range(len(parts))}, parts, at_any)
    floating = frozenset((pid, k) for pid, k in start
                         if parts[pid] and parts[pid][0] is ANY and all(p is ANY for p in parts[pid][:k]))
    float_accepted = frozenset().union(*(pats.terms_of[pid] for pid, k in floating
                                         if k == len(parts[pid])))
    float_literal: dict = {}
    float_glob: dict = {}
    for pid, k in floating:
        if k < len(parts[pid]) and parts[pid][k] is not ANY:
            part = parts[pid][k]
            table = float_glob if isinstance(part, Glob) else float_literal
            table.setdefault(part, []).append((pid, k + 1))
    # For each glob whose floating positions all reach a pattern's end: the positions at
    # whose acceptance its terms can change the rules holding (automaton.anchors_touched),
    # or None when they can anywhere.
    ends_of: dict = {}  # (rule index, term key) -> the positions accepting it
    for pid, terms in enumerate(pats.terms_of):
        for term in terms:
            ends_of.setdefault(term, []).append((pid, len(parts[pid])))
    float_end_positions = frozenset(p for p in floating if p[1] == len(parts[p[0]]))
    end_anchors: dict = {}
    for part, adv in float_glob.items():
        if all(k == len(parts[pid]) for pid, k in adv):
            anchors = anchors_touched(policy, frozenset().union(*(pats.terms_of[pid]
                                                                  for pid, _ in adv)))
            if anchors is not None:
                anchors = frozenset(p for term in anchors for p in ends_of[term])
                if anchors & float_end_positions:
                    anchors = None
            end_anchors[part] = anchors
    float_globs = tuple(sorted(float_glob))
    float_by_bit = [float_glob[g] for g in float_globs]
    float_moves: dict[bytes, list] = {}  # a literal name -> where it moves the floating positions
    setups: dict[frozenset, tuple] = {}  # see glob_setup

    def glob_setup(own: frozenset) -> tuple:
        """For states whose positions move by the globs `own` besides the floating ones
        (few sets, many states each): all their globs in order; the inert ones (_inert);
        the realisable masks in order, each with the bits it has; the masks with a name
        each and those names; and whether each mask but 0 is of inert globs only (then
        every mask goes where 0 does at a state that holds none of their anchors), and if
        so the pattern ends each mask's globs move the floating positions to."""
        out = setups.get(own)
        if out is None:
            globs = tuple(sorted(float_glob.keys() | own))
            inert = _inert(globs, end_anchors, own)
            combos = realisable_masks(globs)
            order = sorted(combos)
            members = {mask: [i for i in range(len(globs)) if mask >> i & 1] for mask in combos}
            uniform = 0 in combos and not any(mask & ~inert[0] for mask in combos)
            ends = {mask: frozenset(p for i in members[mask] for p in float_glob[globs[i]])
                    for mask in combos} if uniform else {}
            out = setups[own] = (globs, inert, order, members, combos, frozenset(combos.values()),
                                 uniform, ends)
        return out

    # Positions in a pattern's trailing `**` run ("sticky": an `under` rule's scope once
    # its path has matched) stay in every state below the one that reached them. A state
    # keeps them as an interned set, so a deep state under many overlapping rules neither
    # scans nor copies them for each of its transitions.
    sticky_all = frozenset(
        (pid, k) for pid, pattern in enumerate(parts) if pattern and pattern[-1] is ANY
        for k in range(_trailing_any(pattern), len(pattern) + 1)) - floating
    accepts_at = {(pid, len(pattern)): terms for pid, (pattern, terms)
                  in enumerate(zip(parts, pats.terms_of))}  # a pattern's end -> its terms
    sticky_ends = sticky_all & accepts_at.keys()
    sticky_ids: dict[frozenset, int] = {}
    sticky_sets: list[frozenset] = []
    sticky_accepted: list[frozenset] = []

    def intern_sticky(sticky: frozenset, within: Optional[int] = None) -> int:
        """The id of a sticky set; `within`, the id of one it holds (what that one accepts
        is then a start, and only the positions it lacks are looked at)."""
        n = sticky_ids.get(sticky)
        if n is None:
            n = sticky_ids[sticky] = len(sticky_sets)
            if within is None:
                accepted = frozenset().union(*map(accepts_at.__getitem__, sticky & sticky_ends))
            else:
                accepted = sticky_accepted[within].union(
                    *map(accepts_at.__getitem__, (sticky - sticky_sets[within]) & sticky_ends))
            sticky_sets.append(sticky)
            sticky_accepted.append(accepted)
        return n

    # Each position's closure, as (its sticky positions, the others), floating ones left
    # out: a state's targets are unions of these (closure distributes over union).
    closed_from: dict[tuple, tuple] = {}

    def close_one(position: tuple) -> tuple:
        if position in at_any:
            closed = _closure((position,), parts, at_any) - floating
            more = closed & sticky_all
            out = (more, closed - more)
        elif position in sticky_all:
            out = (frozenset((position,)), _EMPTY)
        else:  # the most common case: a literal or glob part just matched
            out = (_EMPTY, _EMPTY if position in floating else frozenset((position,)))
        closed_from[position] = out
        return out

    by_pieces: dict[tuple, tuple] = {}  # accepted pieces -> (holding, excepts hit)
    by_core: dict[tuple, tuple] = {}  # (sticky set id, moving positions) -> transitions
    ids: dict[tuple, int] = {}  # (sticky set id, positions) -> state
    by_behaviour: dict[tuple, int] = {}  # (core, rules holding, excepts hit) -> state
    ends = accepts_at.keys() - sticky_all
    has_excepts = any(r.excepts for r in policy.rules)
    holding_of = holder(policy)
    states: list[Optional[RawState]] = []
    queue: deque = deque()

    # A state's transitions depend only on its positions that can still move (its core):
    # those at the end of a pattern with no trailing `**` (a `named` glob just matched, a
    # path just reached) only make it accept. So two sets of positions with one core and
    # the same rules holding (one decision table) are one state: the same label, the same
    # successors. (The except terms they hit are kept apart for lint's FP103.)
    def intern(key: tuple, example: bytes) -> int:
        sid = ids.get(key)
        if sid is None:
            sticky_id, positions = key
            # What the positions accept, in interned pieces: states of one sticky set and
            # one set of patterns ending here (few, many states each) accept alike. Their
            # union is made only where excepts need it (holding_of does without).
            ending = positions & ends
            # (The pieces of patterns ending here first: a `named` glob's may be large, and
            # a union starting from the largest set copies it rather than growing.)
            pieces = (*map(accepts_at.__getitem__, ending), sticky_accepted[sticky_id],
                      float_accepted)
            alike = by_pieces.get(pieces)
            if alike is None:
                if has_excepts:
                    accepted = frozenset.union(*pieces)
                    alike = (holding_of(pieces, accepted), excepts_hit(policy, accepted))
                else:
                    alike = (holding_of(pieces, None), _EMPTY)
                by_pieces[pieces] = alike
            held, hits = alike
            core = (sticky_id, positions - ending) if ending else key
            behaviour = (core, held, hits)
            sid = by_behaviour.get(behaviour)
            if sid is None:
                sid = by_behaviour[behaviour] = len(states)
                if sid >= MAX_STATES:
                    raise TooComplex(f"more than {MAX_STATES} classes")
                states.append(None)
                queue.append((sid, key, example, core, held, hits))
            ids[key] = sid
        return sid

    first = start - floating
    intern((intern_sticky(first & sticky_all), first - sticky_all), b"/")
    while queue:
        sid, key, example, core, held, hits = queue.popleft()
        sticky_id = key[0]
        sticky = sticky_sets[sticky_id]
        # States of one core have the same transitions, worked out once: the first such
        # state interned every target, so the others would find them all.
        known = by_core.get(core)
        if known is not None:
            lits, gl, ms, default, number = known
            states[sid] = RawState(key, lits, gl, ms, default, example, number, held, hits)
            continue
        base: set = set()
        by_literal: dict[bytes, list] = {}
        own: dict[Glob, list] = {}  # the globs this state's positions move by
        for pid, k in core[1]:
            part = parts[pid][k]
            if part is ANY:
                base.add((pid, k))
            elif isinstance(part, Glob):
                own.setdefault(part, []).append((pid, k + 1))
            else:
                by_literal.setdefault(part, []).append((pid, k + 1))
        globs, (inert_bits, bits_at, any_anchor), order, members, combos, witnesses, uniform, \
            inert_ends = glob_setup(frozenset(own))
        # The positions each glob (by its bit) moves on to.
        by_bit = [float_glob.get(g, []) + own.get(g, []) for g in globs] if own else float_by_bit
        prefix = example.rstrip(b"/") + b"/"

        # closure(base | advanced) = closure(base) | closure(advanced): the base (positions
        # at a `**` other than the sticky ones, which stay anyway) is closed once per state.
        base_sticky_id, base_rest = sticky_id, _EMPTY
        if base:
            base_closed = _closure(base, parts, at_any) - floating
            base_sticky = base_closed & sticky_all
            base_rest = base_closed - base_sticky
            if base_sticky - sticky:
                base_sticky_id = intern_sticky(sticky | base_sticky, sticky_id)

        def reach(advanced) -> tuple:
            """The key of the positions `advanced` (and the base) close to, by the closures
            of single positions."""
            if not advanced:
                return (base_sticky_id, base_rest)
            more = moved = _EMPTY
            for p in advanced:
                got = closed_from.get(p)
                if got is None:
                    got = close_one(p)
                if got[0]:
                    more = more | got[0] if more else got[0]
                if got[1]:
                    moved = moved | got[1] if moved else got[1]
            n = base_sticky_id
            if more and not more <= sticky_sets[n]:
                n = intern_sticky(sticky_sets[n] | more, n)
            return (n, base_rest | moved if base_rest else moved)

        def blocking(key: tuple) -> int:
            """The inert globs (bits) that can change the rules holding at `key`."""
            n, moved = key
            if any_anchor.isdisjoint(moved) and any_anchor.isdisjoint(sticky_sets[n]):
                return 0
            bits = 0
            for a in any_anchor & moved:
                bits |= bits_at[a]
            for a in any_anchor & sticky_sets[n]:
                bits |= bits_at[a]
            return bits

        literals = {}
        for lit in sorted(float_literal.keys() | by_literal.keys() if float_literal else by_literal):
            advanced = by_literal.get(lit, [])
            floated = float_moves.get(lit)
            if floated is None:
                floated = float_moves[lit] = float_literal.get(lit, []) + [
                    p for g in float_globs if g.matches(lit) for p in float_glob[g]]
            if floated:
                advanced = advanced + floated
            for g in own:
                if g.matches(lit):
                    advanced = advanced + own[g]
            literals[lit] = intern(reach(advanced), prefix + lit)
        # Examples must not be literal names.
        if literals and not witnesses.isdisjoint(literals):
            combos = glob_combinations([g.text for g in globs], frozenset(literals))
        if uniform:
            # Every mask goes where 0 does, but for the masks of globs whose terms can
            # change the rules holding there (blocking): those are worked out one by one,
            # in order of their numbers as below. Such a mask's globs only move floating
            # positions to the ends of their patterns (no `**` to close over, not sticky):
            # its positions are the base's and those ends.
            zero = (base_sticky_id, base_rest)
            masks = dict.fromkeys(order, intern(zero, prefix + combos[0]))
            blocked = blocking(zero)
            if blocked:
                for mask in order:
                    if mask & blocked:
                        to = inert_ends[mask]
                        masks[mask] = intern((base_sticky_id, base_rest | to if base_rest else to),
                                             prefix + combos[mask])
        else:
            masks = {}
            keys: dict[int, tuple] = {}
            blocking_at: dict[int, int] = {}
            for mask in order:
                witness = combos[mask]
                rest = mask & ~inert_bits
                if rest != mask and rest in keys:  # a submask, so a smaller number: done
                    if rest not in blocking_at:
                        blocking_at[rest] = blocking(keys[rest])
                    if not mask & blocking_at[rest]:
                        masks[mask] = masks[rest]
                        continue
                advanced = [p for i in members[mask] for p in by_bit[i]]
                keys[mask] = reach(advanced)
                masks[mask] = intern(keys[mask], prefix + witness)
        default = masks.get(0)
        if default is None:
            default = intern(reach([]), prefix + b"\x01other")
        number = len(by_core)
        by_core[core] = (literals, globs, masks, default, number)
        states[sid] = RawState(key, literals, globs, masks, default, example, number, held,
                               hits)
    return states  # type: ignore[return-value]




def tables(policy: Policy, raw: list[RawState]) -> list[DecisionTable]:
    """Each state's decision table, for every subject class: the rules matching its path
    that apply to that subject decide. Equal rows and equal tables are one object (each
    table hashes once, decide.DecisionTable), which keeps memory small; no later stage
    depends on it."""
    subjects = partition(policy)
    nsubjects = len(subjects)
    held = [c.rules for c in subjects.classes]
    decide = kind_decider(policy)
    spread = atom_kinds(policy).spread
    memo: dict[Holding, DecisionTable] = {}  # Holdings are interned: one per rule set
    # Equal rows are one object with a number, and tables are interned by their rows'
    # numbers (a table of many subject classes is long: hashing its decisions would dominate).
    # Rows are told apart by their decisions per atom kind: atoms of one kind are decided
    # alike (decide.AtomKinds), and a new row's hash is made from those decisions' hashes
    # (DecisionRow.spread), not from its every atom's.
    rows: dict[tuple[Decision, ...], tuple[DecisionRow, int]] = {}
    interned: dict[tuple[int, ...], DecisionTable] = {}

    def row_of(rules) -> tuple[DecisionRow, int]:
        """The row (and its number) where exactly `rules` hold and apply."""
        decided = decide(rules)
        row = rows.get(decided)
        if row is None:
            row = rows[decided] = (DecisionRow.spread(decided, tuple(map(_HASH, decided)),
                                                      spread), len(rows))
        return row

    out = []
    for st in raw:
        here = st.holding
        t = memo.get(here)
        if t is None:
            # A subject class's table depends only on which of the rules here that have
            # subject conditions apply to it: decide once per such set, not once per class
            # (a policy may have hundreds of subject classes, a node only a few such rules).
            relevant = here.indexes & subjects.conditional
            if relevant:
                rules = list(here.rules)
                decided: dict[frozenset, tuple[DecisionRow, int]] = {}
                per_subject, numbers = [], []
                for s in range(nsubjects):
                    which = relevant & held[s]
                    row = decided.get(which)
                    if row is None:
                        row = decided[which] = row_of(subjects.select(rules, s))
                    per_subject.append(row[0])
                    numbers.append(row[1])
            else:  # every subject class alike
                row = row_of(here.rules)
                per_subject, numbers = [row[0]] * nsubjects, [row[1]] * nsubjects
            t = interned.get(tuple(numbers))
            if t is None:
                t = interned[tuple(numbers)] = DecisionTable(per_subject)
            memo[here] = t
        out.append(t)
    return out


__all__ = ["Class", "ClassTree", "RawState", "TooComplex", "build_raw", "realisable_masks", "tables"]
