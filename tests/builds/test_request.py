"""The build form: defaults, and each bad field refused by name (400, nothing made)."""

from __future__ import annotations

import pytest

from ember.builds import parse_build_form
from ember.errors import InvalidArgument


def test_defaults() -> None:
    form = parse_build_form({}, "abc")
    options = form.options
    assert options.image_name == "builds/abc:latest"
    assert (options.timeout_seconds, options.memory_mb, options.cpus) == (600, 2048, 2)
    assert options.builder_id == "default" and options.dockerfile is None
    assert form.tags == {} and form.secrets == {}


def test_fields_parsed() -> None:
    form = parse_build_form(
        {"image_name": "apps/web", "cpus": "1", "memory_mb": "512", "timeout_seconds": "30",
         "tags": '{"team": "a"}', "secrets": '[{"id": "npm_token"}, {"id": "k", "value": "v"}]',
         "builder_id": "b1", "dockerfile": "FROM x\n"},
        "abc",
    )  # fmt: skip
    assert form.options.image_name == "apps/web:latest"
    assert (form.options.cpus, form.options.memory_mb, form.options.timeout_seconds) == (1, 512, 30)
    assert form.tags == {"team": "a"}
    assert form.secrets == {"npm_token": None, "k": "v"}
    assert form.options.secret_ids == ["k", "npm_token"]
    assert form.options.builder_id == "b1"
    # Empty or "false" cache fields ask for nothing (the client may send them so).
    parse_build_form({"cache_scope": "", "is_admin_build": "false"}, "abc")


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"cpus": "two"}, "invalid_cpus"),
        ({"cpus": "0"}, "invalid_cpus"),
        ({"memory_mb": "64"}, "invalid_memory_mb"),
        ({"timeout_seconds": "-1"}, "invalid_timeout_seconds"),
        ({"tags": "[1]"}, "invalid_tags"),
        ({"tags": "{"}, "invalid_tags"),
        ({"secrets": '{"id": "x"}'}, "invalid_secrets"),
        ({"secrets": '[{"id": "a b"}]'}, "invalid_secrets"),
        ({"secrets": '[{"id": "a"}, {"id": "a"}]'}, "invalid_secrets"),
        ({"secrets": '[{"id": "a", "value": 1}]'}, "invalid_secrets"),
        ({"image_name": "Apps/Web"}, "invalid_image_name"),
        ({"image_name": "127.0.0.1:4973/apps/web:v1"}, "invalid_image_name"),
        ({"base_image_digest": "sha256:abc"}, "invalid_base_image_digest"),
        ({"cache_scope": "tenant-a"}, "not_supported"),
        ({"global_cache_key": "node"}, "not_supported"),
        ({"is_admin_build": "true"}, "not_supported"),
    ],
)
def test_bad_fields(fields: dict[str, str | None], code: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_build_form(fields, "abc")
    assert caught.value.code == code
