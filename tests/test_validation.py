from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.errors import InvalidArgument
from ember.ids import ID_LENGTH, is_id, new_id
from ember.validation import (
    NAME_RE,
    validate_c_string,
    validate_env,
    validate_name,
    validate_tags,
)

names = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


@given(names)
def test_valid_names_pass(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "a.b", "x" * 64, "é", "abc\n"])
def test_invalid_names_fail(name: str) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        validate_name(name)


@given(st.text(max_size=70))
def test_name_check_matches_spec_pattern(name: str) -> None:
    expected = bool(NAME_RE.fullmatch(name)) and len(name) <= 63
    try:
        validate_name(name)
        assert expected
    except InvalidArgument:
        assert not expected


def test_tags() -> None:
    assert validate_tags({"team": "backend", "a b:c/d=e+f@g": ""}) == {
        "team": "backend",
        "a b:c/d=e+f@g": "",
    }
    assert validate_tags(None) == {}
    with pytest.raises(InvalidArgument, match="at most 50"):
        validate_tags({f"k{i}": "v" for i in range(51)})
    with pytest.raises(InvalidArgument, match="invalid key"):
        validate_tags({"": "v"})
    with pytest.raises(InvalidArgument, match="invalid key"):
        validate_tags({"k" * 129: "v"})
    with pytest.raises(InvalidArgument, match="invalid value"):
        validate_tags({"k": "v" * 257})
    with pytest.raises(InvalidArgument, match="invalid value"):
        validate_tags({"k": "semi;colon"})


def test_ids_are_cuid2_shaped_and_unique() -> None:
    ids = {new_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(len(i) == ID_LENGTH and is_id(i) for i in ids)
    assert not is_id("A" * 24) and not is_id("1" + "a" * 23) and not is_id("abc")


def test_env_names_and_c_strings() -> None:
    assert validate_env({"A": "1", "B_2": ""}) == {"A": "1", "B_2": ""}
    assert validate_env(None) == {}
    for bad in ({"A=B": "1"}, {"": "1"}, {"A\0": "1"}, {"A": "x\0y"}):
        with pytest.raises(InvalidArgument):
            validate_env(bad)
    assert validate_c_string("/tmp", field="cwd") == "/tmp"
    with pytest.raises(InvalidArgument, match=r"cwd: .* contains a NUL byte"):
        validate_c_string("/a\0b", field="cwd")
