"""Validation rules from the Hypeman spec: resource names, user tags, environments."""

from __future__ import annotations

import re

from pydantic.config import JsonDict

from ember.errors import InvalidArgument

NAME_MAX = 63
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
# The same rule as a JSON Schema fragment, for the OpenAPI document.
NAME_SCHEMA: JsonDict = {"pattern": NAME_RE.pattern, "minLength": 1, "maxLength": NAME_MAX}
TAGS_MAX = 50
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9 _.:/=+@-]+$")
TAG_KEY_MAX = 128
TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9 _.:/=+@-]*$")
TAG_VALUE_MAX = 256


def validate_name(name: str, *, field: str = "name") -> str:
    if not name or len(name) > NAME_MAX or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{field}: {name!r} must be 1-{NAME_MAX} lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def validate_tags(tags: dict[str, str] | None, *, field: str = "tags") -> dict[str, str]:
    if not tags:
        return {}
    if len(tags) > TAGS_MAX:
        raise InvalidArgument(f"{field}: at most {TAGS_MAX} tags are allowed, got {len(tags)}")
    for key, value in tags.items():
        if len(key) > TAG_KEY_MAX or not TAG_KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"{field}: invalid key {key!r} (1-{TAG_KEY_MAX} characters of "
                "A-Z a-z 0-9 space _ . : / = + @ -)"
            )
        if (
            not isinstance(value, str)
            or len(value) > TAG_VALUE_MAX
            or not TAG_VALUE_RE.fullmatch(value)
        ):
            raise InvalidArgument(
                f"{field}: invalid value for {key!r} (at most {TAG_VALUE_MAX} characters of "
                "A-Z a-z 0-9 space _ . : / = + @ -)"
            )
    return dict(tags)


def validate_env(env: dict[str, str] | None) -> dict[str, str]:
    """Environment variables for a guest process (instance create and exec alike).

    A name must be non-empty without '=' or NUL, a value without NUL: the guest
    receives them as ``NAME=value`` C strings.
    """
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key:
            raise InvalidArgument(f"env: invalid environment variable name {key!r}")
        if "\0" in value:
            raise InvalidArgument(f"env: environment variable {key} contains a NUL byte")
    return dict(env or {})


def validate_c_string(value: str, *, field: str) -> str:
    """Arguments and paths reach the guest as C strings: no NUL bytes."""
    if "\0" in value:
        raise InvalidArgument(f"{field}: {value!r} contains a NUL byte")
    return value
