"""One rule for finding a resource by what a person types: its id, its name, or a unique
prefix of its id (the 12 characters `ls` tables show). Every resource uses it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from ember.errors import InvalidArgument, NotFound
from ember.ids import is_id

T = TypeVar("T")


def find_one(
    ref: str,
    kind: str,
    *,
    by_id: Callable[[str], T | None],
    by_name: Callable[[str], Sequence[T]],
    by_id_prefix: Callable[[str], Sequence[T]],
) -> T:
    """By id, then by name, then by unique id prefix (names never look like ids). A name
    or prefix that matches several is refused (400 `ambiguous`) rather than guessed."""
    found = by_id(ref) if is_id(ref) else None
    if found is not None:
        return found
    for what, lookup in (("name", by_name), ("id prefix", by_id_prefix)):
        matches = lookup(ref) if ref else []
        if len(matches) > 1:
            raise InvalidArgument(
                f"{kind} {what} {ref!r} is ambiguous ({len(matches)} matches): use the id",
                code="ambiguous",
            )
        if matches:
            return matches[0]
    raise NotFound(f"{kind} {ref!r} not found")
