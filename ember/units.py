"""Human-readable sizes and rates, parsed in one place.

Durations are Go-style ("30s", "1m30s"), as Hypeman takes them.
Sizes follow Hypeman: "512MB", "2G", "1GB", "4096" (bytes). Suffixes are binary
(1 GB = 1024^3 bytes), as Hypeman and QEMU treat memory sizes. Rates accept a
size per second ("100MB/s") or bits per second ("1Gbps", decimal like network
gear) and are returned in bytes per second.
"""

from __future__ import annotations

from ember.errors import InvalidArgument

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
_BIT_RATE_UNITS = {"bps": 1, "kbps": 10**3, "mbps": 10**6, "gbps": 10**9}
# Far beyond any disk or memory: larger values are typos (or 40-digit fuzz), not requests.
MAX_SIZE = 1 << 60


def parse_size(value: str | int, *, field: str = "size") -> int:
    """Parse "512MB" / "2G" / 4096 into bytes; raise InvalidArgument naming `field`."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidArgument(f"{field}: size must not be negative")
        return _in_range(value, value, field)
    parts = _number_and_unit(str(value))
    unit = parts[1].lower() if parts and not parts[2] else None
    if not parts or unit not in _SIZE_UNITS:
        raise InvalidArgument(f"{field}: invalid size {value!r} (expected e.g. 512MB, 2GB, 1G)")
    return _in_range(float(parts[0]) * _SIZE_UNITS[unit], value, field)


def _number_and_unit(text: str) -> tuple[str, str, str] | None:
    """`1.5 MB /s` -> ("1.5", "MB", "/s"): a decimal number (digits, maybe a fraction),
    the ASCII letters after it and the rest, spaces around each dropped; None without a
    number. A regular expression written out (tests/test_units.py has it): `ember ps`
    reads sizes on its fast path, where importing `re` costs more than the request."""
    body = text.strip()
    end = _decimals(body, 0)
    if not end:
        return None
    if body[end : end + 1] == "." and (fraction := _decimals(body, end + 1)) > end + 1:
        end = fraction
    rest = body[end:].lstrip()
    letters = next((i for i, c in enumerate(rest) if not (c.isascii() and c.isalpha())), len(rest))
    return body[:end], rest[:letters], rest[letters:].strip()


def _decimals(text: str, start: int) -> int:
    """Where the decimal digits (any script's, as `re`'s `\\d`) from `start` end."""
    end = start
    while end < len(text) and text[end].isdecimal():
        end += 1
    return end


def _in_range(number: float, value: object, field: str) -> int:
    if not number <= MAX_SIZE:  # also catches inf from a number too long for a float
        shown = str(value) if len(str(value)) <= 24 else f"{str(value)[:20]}..."
        raise InvalidArgument(f"{field}: {shown!r} is out of range (at most 1024PB)")
    return int(number)


def parse_rate(value: str, *, field: str = "rate") -> int:
    """Parse "100MB/s" or "1Gbps" into bytes per second."""
    parts = _number_and_unit(str(value))
    if parts and parts[2] in ("", "/s"):
        number, unit, per_second = float(parts[0]), parts[1].lower(), parts[2]
        if unit in _BIT_RATE_UNITS and not per_second:
            return _in_range(number * _BIT_RATE_UNITS[unit] / 8, value, field)
        if unit in _SIZE_UNITS and per_second:
            return _in_range(number * _SIZE_UNITS[unit], value, field)
    raise InvalidArgument(f"{field}: invalid rate {value!r} (expected e.g. 100MB/s or 1Gbps)")


def format_size(num_bytes: int) -> str:
    """Render bytes the way parse_size reads them back ("1.5GB", "512MB", "100B")."""
    for unit, factor in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if num_bytes >= factor:
            return f"{num_bytes / factor:.4g}{unit}"
    return f"{num_bytes}B"


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = r"(\d+(?:\.\d+)?)(ms|s|m|h)"


def parse_duration(text: str, *, field: str = "duration") -> float:
    """A Go-style duration ("30s", "1m30s", "500ms") in seconds."""
    import re  # here: sizes are read on the CLI's fast path (`_number_and_unit`)

    parts = re.findall(_DURATION_PART, text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise InvalidArgument(f"{field}: invalid duration {text!r} (e.g. 30s, 2m, 500ms)")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
