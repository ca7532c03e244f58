"""Unikraft Cloud's instance `autokill` on the fake hypervisor: an instance stopped or
in Standby for `time_ms` is deleted by the reaper, with all it holds; a running one,
one without autokill, and one whose autokill a PATCH switched off stay."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from ember.errors import InvalidArgument
from ember.instances.expiry import due_at
from ember.instances.request import UpdateInstanceRequest

from .conftest import Rig

SMALL = {"overlay_size": "64MB", "vcpus": 1}
AUTOKILL = {"autokill": {"time_ms": 300}}


async def until_gone(rig: Rig, ids: set[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(rig.core.repo.get(i) for i in ids) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_autokill_deletes_what_stopped_or_slept_its_time_and_nothing_else(rig: Rig) -> None:
    running = await rig.running("running", **SMALL, **AUTOKILL)
    stopped = await rig.running("stopped", **SMALL, **AUTOKILL)
    asleep = await rig.running("asleep", **SMALL, **AUTOKILL)
    switched_off = await rig.running("switched-off", **SMALL, **AUTOKILL)
    plain = await rig.running("plain", **SMALL)
    assert due_at(running) is None  # running: no due time
    off = UpdateInstanceRequest.model_validate({"autokill": None})
    assert (await rig.manager.update(switched_off.id, off)).autokill is None
    for record in (switched_off, plain):
        await rig.manager.stop(record.id)
    saved = await rig.manager.standby(asleep.id)
    assert due_at(saved) == saved.stopped_since + timedelta(milliseconds=300)  # type: ignore[operator]
    await rig.manager.stop(stopped.id)
    await until_gone(rig, {stopped.id, asleep.id})
    for gone in (stopped.id, asleep.id):
        rig.assert_clean(gone)
    await asyncio.sleep(0.5)  # past the time_ms of the others too: still there
    left = {r.name for r in rig.core.repo.all()}
    assert left == {"running", "switched-off", "plain"}


async def test_autokill_refusals_are_named(rig: Rig) -> None:
    with pytest.raises(InvalidArgument) as counted:
        await rig.running("a", **SMALL, autokill={"num_requests": 10})
    assert counted.value.code == "not_supported"
    with pytest.raises(InvalidArgument) as negative:
        await rig.running("a", **SMALL, autokill={"time_ms": -1})
    assert negative.value.code == "invalid_time"
    assert rig.core.repo.all() == []
