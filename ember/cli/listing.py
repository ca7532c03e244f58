"""Lists without Typer or rich: the cells of `ember ps` (one definition, shown by both
the full CLI and the fast path) and a plain renderer for tables that need no folding.

Cells are spans of (text, style) rather than rich markup, so that rich (`Text`) and
the plain renderer draw the same thing; the renderer writes exactly what rich writes
for such a table (a test compares them byte for byte), or declines (None) when rich
would have to fold or measure something (too wide, non-ASCII text), and rich draws it.
"""

from __future__ import annotations

import time

from ember.client.wire import split_url
from ember.errors import EmberError
from ember.units import parse_size

# Not `typing`'s, nor dataclasses (which import `inspect`): `ember ps` imports this
# module on its fast path, where each of them would cost more than the request.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    Span: TypeAlias = tuple[str, str]  # text, style ("" for none)
    Cell: TypeAlias = tuple[Span, ...]
STOPPED = ("Stopped", "Shutdown")
STATUS_COLOURS = {
    "ready": "green", "pushed": "green", "failed": "red", "Running": "green", "Stopped": "dim",
    "Standby": "cyan", "Paused": "cyan", "Shutdown": "dim", "Unknown": "red",
}  # fmt: skip
# The codes rich writes for the styles cells use (standard colours stay standard on
# every colour system rich detects).
ANSI = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}
GAP = 2  # spaces between columns (rich: padding (0, 2, 0, 0), no edge padding)


class Column:
    __slots__ = ("fold", "header")

    def __init__(self, header: str, *, fold: bool = False) -> None:
        self.header = header
        self.fold = fold  # long text folds onto more lines (rich only) rather than being cut


class Listing:
    __slots__ = ("columns", "rows")

    def __init__(self, columns: list[Column], rows: list[list[Cell]]) -> None:
        self.columns, self.rows = columns, rows


def plain(text: str) -> Cell:
    return ((text, ""),)


def status(value: str) -> Span:
    return value, STATUS_COLOURS.get(value, "yellow")


def short_id(value: str) -> str:
    return value[:12]


def human_bytes(count: int | None) -> str:
    """Binary units everywhere the CLI shows a size ("256 MiB", "1.5 GiB", "1 GiB"), as
    Ember reads them: "1GB" in a request is 1 GiB."""
    if count is None:
        return ""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" or value == int(value) else f"{value:.1f} {unit}"


def image_label(name: str, own_registry: str) -> str:
    """An image as a person types it: Docker Hub's and this server's registry host left
    out (`alpine:3.20`, `demo/hello:latest`); `ember run` resolves both back."""
    for prefix in ("docker.io/library/", "docker.io/", f"{own_registry}/"):
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return name


def own_registry(base_url: str) -> str:
    """host:port images pushed to the server at `base_url` are named with."""
    if plain := split_url(base_url):  # without `urllib.parse` on the fast path
        return f"{plain[0]}:{plain[1]}"
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def ago(timestamp: str | None) -> str:
    """'3m ago' for an ISO timestamp: docker's '3 minutes ago', short enough for 80
    columns."""
    if not timestamp:
        return ""
    seconds = int(time.time() - epoch(timestamp))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return "just now"


def epoch(timestamp: str) -> float:
    """Seconds since 1970 of an ISO timestamp. The API's own form, in UTC
    (`2026-12-06T16:49:28.955386Z`), is read here: importing `datetime` costs `ember
    ps`'s fast path ~1 ms; `datetime` reads any other."""
    clock, fraction = timestamp[:19], timestamp[19:-1]
    digits = clock[:4] + clock[5:7] + clock[8:10] + clock[11:13] + clock[14:16] + clock[17:]
    if (
        timestamp.endswith("Z")
        and clock[4::3] == "--T::"
        and len(digits) == 14
        and digits.isdigit()
        and digits.isascii()
        and (not fraction or (fraction[0] == "." and fraction[1:7].isdigit()))
        and len(fraction) <= 7
        and fraction.isascii()
    ):
        year, month, day = int(clock[:4]), int(clock[5:7]), int(clock[8:10])
        hours, minutes, seconds = int(clock[11:13]), int(clock[14:16]), int(clock[17:])
        whole = _days_since_1970(year, month, day) * 86400 + hours * 3600 + minutes * 60 + seconds
        # As datetime's total_seconds() rounds: whole microseconds, then one division.
        return (whole * 10**6 + int(fraction[1:].ljust(6, "0"))) / 10**6
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _days_since_1970(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a date of the (proleptic) Gregorian calendar: March-based
    years put the leap day last, and 400 years are 146097 days."""
    year -= month <= 2
    era, year_of_era = divmod(year, 400)
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def memory_label(size: str | None) -> str:
    """The API's size ("256MB", binary as Ember reads it) as every size the CLI shows."""
    try:
        return human_bytes(parse_size(size)) if size else ""
    except EmberError:
        return size or ""


def stop_reason_text(row: dict[str, Any]) -> str:
    """The seed's alias of a stop reason, e.g. 7 -> "7 --PAK"."""
    reason = row.get("stop_reason")
    if reason is None:
        return ""
    letters = "".join(
        c if reason & bit else "-" for c, bit in zip("FUPAK", (16, 8, 4, 2, 1), strict=True)
    )
    return f"{reason} {letters}"


# ---- ember ps -----------------------------------------------------------------------


def state_name(value: str) -> str:
    """`running` or `RUNNING` as the API's `Running` (states are single words)."""
    return value.strip().capitalize()


def visible(rows: list[dict[str, Any]], all_: bool, state: str | None) -> list[dict[str, Any]]:
    """What `ps` lists: instances not stopped, unless -a or a state was asked for."""
    return rows if all_ or state is not None else [r for r in rows if r["state"] not in STOPPED]


def state_cell(row: dict[str, Any]) -> Cell:
    spans = [status(row["state"])]
    if row.get("exit_code") is not None and row["state"] in STOPPED:
        spans += [(" ", ""), (f"({row['exit_code']})", "dim")]
    if reason := stop_reason_text(row):  # why it stopped, e.g. `7 --PAK` (scaled to zero)
        spans += [(" ", ""), (reason, "dim")]
    return tuple(spans)


def instances_listing(rows: list[dict[str, Any]], own_registry: str) -> Listing:
    """`ember ps`'s table; the GROUP column only when some instance is in a group."""
    with_group = any(row.get("service_group") for row in rows)
    group = [Column("GROUP", fold=True)] if with_group else []
    columns = [Column("ID"), Column("NAME", fold=True), Column("IMAGE", fold=True),
               Column("STATE"), *group, Column("CPUS"), Column("MEMORY"),
               Column("CREATED")]  # fmt: skip
    listing = Listing(columns, [])
    for row in rows:
        cells = [plain(short_id(row["id"])), plain(row["name"]),
                 plain(image_label(row["image"], own_registry)), state_cell(row)]  # fmt: skip
        if with_group:
            cells.append(plain((row.get("service_group") or {}).get("name", "")))
        cells += [plain(str(row.get("vcpus", ""))), plain(memory_label(row.get("size"))),
                  plain(ago(row.get("created_at")))]  # fmt: skip
        listing.rows.append(cells)
    return listing


# ---- the plain renderer ---------------------------------------------------------------


def render(listing: Listing, *, colour: bool, width: int) -> str | None:
    """The table as rich draws it (header in bold, cells padded, two spaces between
    columns), or None when only rich can: wider than `width`, or text that is not
    printable ASCII (rich measures wide characters and escapes control ones)."""
    texts = [[c.header for c in listing.columns]] + [
        ["".join(text for text, _ in cell) for cell in row] for row in listing.rows
    ]
    if not all(text.isascii() and text.isprintable() for line in texts for text in line):
        return None
    widths = [max(len(line[i]) for line in texts) for i in range(len(listing.columns))]
    if sum(widths) + GAP * (len(widths) - 1) > width:
        return None
    last = len(widths) - 1

    def paint(text: str, style: str) -> str:
        return f"\x1b[{ANSI[style]}m{text}\x1b[0m" if colour and style and text else text

    header = "".join(
        paint(c.header.ljust(w), "bold") + (paint(" " * GAP, "bold") if i < last else "")
        for i, (c, w) in enumerate(zip(listing.columns, widths, strict=True))
    )
    lines = [header]
    for row, text in zip(listing.rows, texts[1:], strict=True):
        lines.append(
            "".join(
                "".join(paint(t, s) for t, s in cell)
                + " " * (w - len(text[i]))
                + (" " * GAP if i < last else "")
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines) + "\n"
