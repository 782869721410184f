"""Values derived from an immutable compiler value, kept on the value itself.

The stages memoise what large policies ask again and again (a decision per set of matching
rules, the rules' scope shapes, the rendered decision logic). Kept on the policy or model
they are derived from, such a memo lives exactly as long as that value: nothing keyed by
`id()` in a module that could outlive it, keep it alive, or be mistaken for the memo of a
later value at the same address.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def derived(owner: object, name: str, make: Callable[[], T]) -> T:
    """owner's `name`, computed by make() the first time (frozen dataclasses included)."""
    try:
        return owner.__dict__[name]
    except KeyError:
        value = make()
        object.__setattr__(owner, name, value)
        return value


class ByValue:
    """A memo keyed by value that finds an object it has seen before by identity first.
    Hashing a row of decisions costs a Python call per decision, and lowering asks about
    the same few objects again and again; an equal object met later still finds the same
    entry, so what the memo returns never depends on whether equal values were interned.
    Entries keep their objects alive, so an id is never reused while the memo lives."""

    __slots__ = ("_by_id", "_by_value")

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[object, object]] = {}
        self._by_value: dict[object, object] = {}

    def get(self, key, make: Callable):
        hit = self._by_id.get(id(key))
        if hit is not None and hit[0] is key:
            return hit[1]
        value = self._by_value.get(key)
        if value is None:
            value = self._by_value[key] = make(key)
        self._by_id[id(key)] = (key, value)
        return value
