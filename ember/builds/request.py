"""What `POST /builds` asks for, checked before anything is stored or started.

The multipart form's fields arrive as strings (Hypeman sends `tags` and `secrets` as
JSON text); each is parsed and checked here, and a bad one is a 400 naming its field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ember.builds.models import DEFAULT_BUILDER, BuildOptions
from ember.errors import InvalidArgument
from ember.validation import validate_tags

__all__ = ["LIMITS", "BuildForm", "parse_build_form"]

# Field -> (default, least, most): Hypeman's defaults; the most keeps one build on a host.
LIMITS: dict[str, tuple[int, int, int]] = {
    "timeout_seconds": (600, 1, 24 * 3600),
    "memory_mb": (2048, 256, 64 * 1024),
    "cpus": (2, 1, 64),
}
SECRET_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
REPOSITORY = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class BuildForm:
    options: BuildOptions
    tags: dict[str, str]
    secrets: dict[str, str | None]  # id -> value given in the request (None: the server's)


def parse_build_form(fields: dict[str, str | None], build_id: str) -> BuildForm:
    """`fields`: the form's text fields (None: not given); `build_id` names the default image."""
    numbers = {name: _integer(fields, name, *limits) for name, limits in LIMITS.items()}
    secrets = _secrets(fields.get("secrets"))
    image_name = _image_name(fields.get("image_name") or f"builds/{build_id}")
    dockerfile = fields.get("dockerfile") or None
    _refuse_shared_caches(fields)
    base_digest = fields.get("base_image_digest") or None
    if base_digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", base_digest):
        raise InvalidArgument("base_image_digest: not a sha256:<64 hex> digest",
                              code="invalid_base_image_digest")  # fmt: skip
    options = BuildOptions(
        builder_id=fields.get("builder_id") or DEFAULT_BUILDER,
        image_name=image_name,
        dockerfile=dockerfile,
        secret_ids=sorted(secrets),
        base_image_digest=base_digest,
        **numbers,
    )
    return BuildForm(options=options, tags=_tags(fields.get("tags")), secrets=secrets)


def _refuse_shared_caches(fields: dict[str, str | None]) -> None:
    """Hypeman's cache sharing (a tenant prefix, a global cache that admin builds fill)
    is not built: refused by name, never ignored (ignoring a tenant scope would share one
    tenant's cache with another)."""
    asked = [name for name in ("cache_scope", "global_cache_key") if fields.get(name)]
    if (fields.get("is_admin_build") or "").lower() == "true":
        asked.append("is_admin_build")
    if asked:
        raise InvalidArgument(
            f"{', '.join(asked)}: Ember keeps one cache per builder and no shared one; give "
            "each tenant (or scope) a builder of its own (builder_id)",
            code="not_supported",
        )


def _integer(fields: dict[str, str | None], name: str, default: int, least: int, most: int) -> int:
    text = fields.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(
            f"{name}: {text!r} is not an integer", code="invalid_" + name
        ) from None
    if not least <= value <= most:
        raise InvalidArgument(f"{name}: {value} is outside {least}..{most}", code="invalid_" + name)
    return value


def _json(text: str, field: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{field}: not JSON ({exc.msg})", code=f"invalid_{field}") from None


def _tags(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    value = _json(text, "tags")
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument('tags: a JSON object of strings, e.g. {"team":"backend"}',
                              code="invalid_tags")  # fmt: skip
    return validate_tags(value)


def _secrets(text: str | None) -> dict[str, str | None]:
    """`[{"id": "npm_token"}, {"id": "x", "value": "..."}]`; `value` is Ember's extension
    (without it the server's stored secret of that id is used)."""
    if not text:
        return {}
    value = _json(text, "secrets")
    shape = 'secrets: a JSON array of {"id": ...} objects'
    if not isinstance(value, list):
        raise InvalidArgument(shape, code="invalid_secrets")
    secrets: dict[str, str | None] = {}
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise InvalidArgument(shape, code="invalid_secrets")
        if not SECRET_ID.match(item["id"]) or item["id"] in secrets:
            raise InvalidArgument(
                f"secrets: id {item['id']!r} is invalid or repeated "
                "(letters, digits, . _ -; at most 64)",
                code="invalid_secrets",
            )
        if set(item) - {"id", "value"} or not isinstance(item.get("value", ""), str):
            raise InvalidArgument(
                shape + ' with an optional string "value"', code="invalid_secrets"
            )
        secrets[item["id"]] = item.get("value")
    return secrets


def _image_name(name: str) -> str:
    """`repository[:tag]` in Ember's registry, `:latest` when no tag is given."""
    repository, _, tag = name.rpartition(":") if ":" in name else (name, "", "latest")
    if not REPOSITORY.match(repository) or not TAG.match(tag):
        raise InvalidArgument(
            f"image_name: {name!r} is not a repository[:tag] (lowercase "
            "path components, no registry host)",
            code="invalid_image_name",
        )
    return f"{repository}:{tag}"
