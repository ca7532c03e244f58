"""The plain renderer draws `ember ps` exactly as rich does (colour or none, each colour
system rich may detect), and declines where only rich can draw it."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from ember.cli.common import rich_table
from ember.cli.listing import Listing, epoch, instances_listing, render

OWN = "127.0.0.1:4973"
NOW = datetime.now(UTC)


def instance(name: str, state: str, **extra: Any) -> dict[str, Any]:
    created = (NOW - timedelta(minutes=3)).isoformat().replace("+00:00", "Z")
    return {"id": f"{name:x<24}", "name": name, "image": f"{OWN}/demo/hello:latest",
            "state": state, "vcpus": 1, "size": "256MB", "created_at": created} | extra  # fmt: skip


SAMPLES = {
    "none": [],
    "running": [instance("demo", "Running")],
    "mixed": [
        instance("web", "Running", image="docker.io/library/alpine:3.20"),
        instance("job", "Stopped", exit_code=3),
        instance("idle", "Standby", stop_reason=7, size="1GB"),
        instance("odd", "Initializing", image="ghcr.io/x/y:1", vcpus=2),
    ],
    "grouped": [
        instance("a", "Running", service_group={"name": "shop"}),
        instance("b", "Shutdown", exit_code=0),
    ],
}


def by_rich(listing: Listing, colour: str | None, width: int) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=colour is not None,
                      color_system=colour, highlight=False)  # type: ignore[arg-type]  # fmt: skip
    console.print(rich_table(listing))
    return out.getvalue()


@pytest.mark.parametrize("sample", SAMPLES)
@pytest.mark.parametrize("colour", [None, "standard", "256", "truecolor"])
def test_the_plain_table_is_rich_s_table(sample: str, colour: str | None) -> None:
    listing = instances_listing(SAMPLES[sample], OWN)
    drawn = render(listing, colour=colour is not None, width=200)
    assert drawn == by_rich(listing, colour, 200)


def test_it_declines_what_only_rich_can_draw() -> None:
    long = instance("a-very-long-instance-name-" * 3, "Running")
    assert render(instances_listing([long], OWN), colour=False, width=80) is None  # folds
    wide = instance("café", "Running")
    assert render(instances_listing([wide], OWN), colour=False, width=200) is None
    fits = instances_listing([instance("demo", "Running")], OWN)
    assert render(fits, colour=False, width=80) == by_rich(fits, None, 80)


@given(st.datetimes(timezones=st.just(UTC)))
def test_timestamps_read_as_datetime_reads_them(when: datetime) -> None:
    """The API's form (`...Z`) is read by hand (no `datetime` import on the fast path)."""
    api_form = when.isoformat().replace("+00:00", "Z")
    assert epoch(api_form) == when.timestamp(), api_form
    offset = when.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    assert epoch(offset) == when.timestamp(), offset  # other forms: datetime reads them
