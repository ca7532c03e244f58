from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.errors import InvalidArgument
from ember.units import format_size, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1GB", 1024**3),
        ("512MB", 512 * 1024**2),
        ("2G", 2 * 1024**3),
        ("4096", 4096),
        ("1.5GB", 3 * 512 * 1024**2),
        (" 10 kb ", 10240),
        ("1GiB", 1024**3),
        (7, 7),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "1XB", "-1GB", "1 G B", "1e3", "abc", -5])
def test_parse_size_rejects(text: str | int) -> None:
    with pytest.raises(InvalidArgument, match="memory"):
        parse_size(text, field="memory")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100MB/s", 100 * 1024**2),
        ("1Gbps", 125_000_000),
        ("8kbps", 1000),
        ("10 MB/s", 10 * 1024**2),
    ],
)
def test_parse_rate(text: str, expected: int) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["100MB", "1Gbps/s", "fast", "", "1Gb"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument, match="bandwidth"):
        parse_rate(text, field="bandwidth")


@given(st.integers(min_value=0, max_value=2**50))
def test_format_then_parse_is_close(num_bytes: int) -> None:
    parsed = parse_size(format_size(num_bytes))
    assert abs(parsed - num_bytes) <= max(num_bytes * 0.001, 0)


@given(st.text(max_size=12))
def test_parse_size_never_crashes(text: str) -> None:
    with contextlib.suppress(InvalidArgument):
        assert parse_size(text) >= 0
