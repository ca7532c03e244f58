"""Resources an instance holds: acquired in order, released in reverse on every failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import InvalidState
from ember.instances.layout import InstanceLayout, Layout
from ember.instances.models import InstanceRecord
from ember.instances.plan import BootDevices, CreatePlan
from ember.instances.resources import InstanceResource, Resources
from ember.instances.state import State, can_transition, check_transition


class Recorder(InstanceResource):
    """A resource that writes down what was done to it, and fails where it is told to."""

    def __init__(self, name: str, log: list[str], fail_on: str = "") -> None:
        self.name, self.log, self.fail_on = name, log, fail_on

    def _step(self, what: str) -> None:
        if what == self.fail_on:
            raise RuntimeError(f"{self.name} cannot {what}")
        self.log.append(f"{what} {self.name}")

    async def acquire(self, plan: CreatePlan, layout: InstanceLayout) -> None:
        self._step("acquire")

    async def release(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        self._step("release")

    async def attach(self, record: InstanceRecord, layout: InstanceLayout) -> BootDevices:
        self._step("attach")
        return BootDevices()

    async def detach(self, record: InstanceRecord, layout: InstanceLayout) -> None:
        self._step("detach")


RECORD = InstanceRecord(
    id="r" * 24, name="r", image="i", image_digest="d", memory_bytes=1, overlay_bytes=1
)


def layout(tmp_path: Path) -> InstanceLayout:
    return Layout(tmp_path, tmp_path).of(RECORD.id)


@pytest.mark.parametrize("failing", ["files", "root", "lease", "volumes"])
async def test_a_create_failing_at_each_step_releases_what_it_got_in_reverse(
    failing: str, tmp_path: Path
) -> None:
    log: list[str] = []
    names = ["files", "root", "lease", "volumes"]
    resources = Resources(
        [Recorder(n, log, fail_on="acquire" if n == failing else "") for n in names]
    )
    with pytest.raises(RuntimeError, match=f"{failing} cannot acquire"):
        await resources.acquire(CreatePlan(record=RECORD, network=None), layout(tmp_path))
    got = names[: names.index(failing)]
    assert log == [f"acquire {n}" for n in got] + [f"release {n}" for n in reversed(got)]


async def test_delete_releases_everything_in_reverse_even_past_a_failure(tmp_path: Path) -> None:
    log: list[str] = []
    resources = Resources(
        [Recorder("files", log), Recorder("lease", log, fail_on="release"), Recorder("vol", log)]
    )
    await resources.release(RECORD, layout(tmp_path))
    assert log == ["release vol", "release files"]  # the stuck lease does not hold the rest


async def test_a_boot_failing_to_attach_detaches_what_it_attached(tmp_path: Path) -> None:
    log: list[str] = []
    resources = Resources([Recorder("lease", log), Recorder("vol", log, fail_on="attach")])
    with pytest.raises(RuntimeError):
        await resources.attach(RECORD, layout(tmp_path))
    assert log == ["attach lease", "detach lease"]


def test_every_state_change_is_a_checked_single_hop() -> None:
    assert can_transition(State.RUNNING, State.STOPPED)
    assert can_transition(State.STOPPED, State.UNKNOWN)  # any state may become Unknown
    for current, target in [
        (State.STOPPED, State.RUNNING),
        (State.CREATED, State.RUNNING),
        (State.SHUTDOWN, State.RUNNING),
    ]:
        with pytest.raises(InvalidState, match=f"cannot go from {current} to {target}"):
            check_transition(current, target)
