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
