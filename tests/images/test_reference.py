from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.errors import InvalidArgument
from ember.images.reference import parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("alpine:3.20", "docker.io/library/alpine:3.20"),
        ("library/alpine", "docker.io/library/alpine:latest"),
        ("docker.io/nginx", "docker.io/library/nginx:latest"),
        ("user/app:v1.2", "docker.io/user/app:v1.2"),
        ("host:5000/a/b:tag", "host:5000/a/b:tag"),
        ("localhost/x", "localhost/x:latest"),
        ("ghcr.io/org/app", "ghcr.io/org/app:latest"),
        ("127.0.0.1:4973/hello:latest", "127.0.0.1:4973/hello:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"a/b:t@{DIGEST}", f"docker.io/a/b@{DIGEST}"),
    ],
)
def test_normalizes_like_docker(text: str, name: str) -> None:
    assert parse_reference(text).name == name


def test_reference_asks_for_digest_first() -> None:
    assert parse_reference(f"a:t@{DIGEST}").reference == DIGEST
    assert parse_reference("a:t").reference == "t"
    assert parse_reference("a").reference == "latest"


@pytest.mark.parametrize(
    "text",
    ["", "   ", "UPPER/case", "a b", "a@sha256:short", "a:bad:tag", "a:-tag", "a//b", "a/", "-a"],
)
def test_invalid_references_are_400(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_reference(text)


components = st.from_regex(r"\A[a-z0-9]{1,8}([._-][a-z0-9]{1,8})?\Z")
tags = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")


@given(st.lists(components, min_size=1, max_size=3), tags)
def test_normalized_names_parse_back_to_themselves(parts: list[str], tag: str) -> None:
    name = parse_reference(f"{'/'.join(parts)}:{tag}").name
    assert parse_reference(name).name == name
    assert name.endswith(f":{tag}")


@given(st.text(max_size=40))
def test_never_crashes(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidArgument:
        return
    assert ref.name


hosts = st.sampled_from(["", "localhost:5000/", "127.0.0.1:4973/", "registry.example.com/"])


@given(hosts, st.lists(components, min_size=1, max_size=3), st.binary(min_size=1, max_size=8))
def test_digest_references_round_trip(host: str, parts: list[str], seed: bytes) -> None:
    digest = "sha256:" + hashlib.sha256(seed).hexdigest()
    ref = parse_reference(f"{host}{'/'.join(parts)}@{digest}")
    assert ref.digest == digest and ref.reference == digest
    assert ref.name.endswith(f"@{digest}")
    assert parse_reference(ref.name) == ref


@given(hosts, st.lists(components, min_size=1, max_size=3))
def test_uppercase_repositories_are_refused(host: str, parts: list[str]) -> None:
    # The last component is always part of the repository (a first one may be a host).
    parts[-1] += "X"
    with pytest.raises(InvalidArgument, match="invalid repository"):
        parse_reference(f"{host}{'/'.join(parts)}")
