"""Calendar expressions (systemd.time(7) syntax, as the seed's `when` says) parsed by
systemd itself: `systemd-analyze calendar` normalises an expression, refuses a bad
one, and gives its next elapse after any base time. Why not a parser of our own: the
syntax is large (weekday ranges, `~` from the month's end, repetitions, time zones),
and the seed names systemd's as the contract; the binary is on every systemd host."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from ember.errors import InvalidArgument, Unavailable

BINARY = "systemd-analyze"
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Calendar:
    normalized: str
    next_at: datetime | None  # None: it never elapses again


async def parse(when: str, after: datetime, *, field: str = "when") -> Calendar:
    """The expression's normal form and its first elapse after `after`; InvalidArgument
    naming `field` when systemd refuses it."""
    if not when.strip() or "\n" in when:
        raise InvalidArgument(f"{field}: give a calendar expression, e.g. 'Mon *-*-* 08:00'")
    base = f"--base-time=@{int(after.timestamp())}"
    try:
        proc = await asyncio.create_subprocess_exec(
            BINARY, "calendar", "--iterations=1", base, "--", when,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TZ": "UTC", "SYSTEMD_COLORS": "0"},
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_SECONDS)
    except (OSError, TimeoutError) as exc:
        raise Unavailable(f"cannot evaluate calendar expressions: {BINARY}: {exc}") from exc
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip().rsplit(":", 1)[-1].strip()
        raise InvalidArgument(f"{field}: {when!r} is not a systemd calendar expression ({why})")
    lines = dict(_fields(out.decode()))
    elapse = lines.get("Next elapse", "never")
    return Calendar(lines.get("Normalized form", when), _elapse(elapse))


def _fields(text: str) -> list[tuple[str, str]]:
    return [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in
                                                   text.splitlines()) if v]  # fmt: skip


def _elapse(text: str) -> datetime | None:
    """'Mon 2027-01-18 08:00:00 UTC' -> that time; 'never' -> None."""
    if text == "never":
        return None
    _, day, clock, _ = text.split()
    return datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=UTC)


__all__ = ["Calendar", "parse"]
