from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ember.errors import InvalidArgument
from ember.units import (
    _BIT_RATE_UNITS,
    _SIZE_UNITS,
    MAX_SIZE,
    format_size,
    parse_rate,
    parse_size,
)


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


# The regular expressions parse_size and parse_rate once used: they are written out now,
# as the fast path of `ember ps` reads sizes without importing `re`.
NUMBER = r"(\d+(?:\.\d+)?)"
SIZE_RE = re.compile(rf"^\s*{NUMBER}\s*([a-zA-Z]*)\s*$")
RATE_RE = re.compile(rf"^\s*{NUMBER}\s*([a-zA-Z]*)\s*(/s)?\s*$")
PIECES = st.sampled_from(["1", "12", "0.5", "1.", ".5", "\u0663", "\u00b2", " ", "\t",
                          "\xa0", "\n", "k", "KB", "MiB", "g", "T", "x", "\u00e9", "/s",
                          "/", "s", "bps", "Gbps", "-", "e3", "_"])  # fmt: skip


def _by_regex(text: str, rate: bool) -> int | None:
    match = (RATE_RE if rate else SIZE_RE).fullmatch(text)
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2).lower()
    if not rate or match.group(3):
        value = number * _SIZE_UNITS[unit] if unit in _SIZE_UNITS else None
    else:
        value = number * _BIT_RATE_UNITS[unit] / 8 if unit in _BIT_RATE_UNITS else None
    return int(value) if value is not None and value <= MAX_SIZE else None


def _parsed(parse: Callable[[str], int], text: str) -> int | None:
    try:
        return parse(text)
    except InvalidArgument:
        return None


@given(st.lists(PIECES, max_size=6).map("".join) | st.text(max_size=8))
@example("\u00b2")  # a digit that is not decimal: no number
@example("\u0663 MB")  # a decimal digit of another script: a number
@example("1.")
@example(".5")
@example("\xa01.5\tGiB\n")
@example("10 MB /s")
def test_sizes_and_rates_read_as_the_regular_expressions_did(text: str) -> None:
    assert _parsed(parse_size, text) == _by_regex(text, rate=False), repr(text)
    assert _parsed(parse_rate, text) == _by_regex(text, rate=True), repr(text)
