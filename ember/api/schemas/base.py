"""What every wire schema shares: how an unset optional field goes on the wire."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from ember.validation import NAME_SCHEMA

T = TypeVar("T")


def _unset(value: object) -> bool:
    return value is None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # left out, not null: there is no default value to show


# A field Hypeman's spec types without `nullable` (an object, a string, a boolean, a
# number): left out of an answer when unset, never sent as null, and documented in
# `/openapi.json` as the plain type. Fields the spec does make nullable stay `T | None`.
Omitted = Annotated[
    T | SkipJsonSchema[None], Field(exclude_if=_unset, json_schema_extra=_no_default)
]


def name_field(description: str, default: Any = ...) -> Any:
    """A `name` request field documented with the name rule of `ember.validation` (the
    manager enforces it with a message naming the field; pydantic's would say less)."""
    return Field(default, description=description, json_schema_extra=NAME_SCHEMA)
