"""The build manager without VMs: builders, the per-builder queue, cancel and failure paths.

The builder image step is replaced by one that waits for the test (a build stays
`building` as long as the test likes) or fails; nothing here boots a VM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from ember.builds import BuildManager, BuildSettings, BuildStatus, parse_build_form
from ember.errors import Conflict, InvalidArgument, NotFound, Unavailable
from ember.store import Store
from ember.volumes import VolumeManager


class Gate:
    """`builder_image` for the manager: each call waits until opened, then fails (the
    build then ends `failed` with this message, as a real failure to make the image)."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.calls = 0

    async def __call__(self, recipe: object) -> str:
        self.calls += 1
        await self.opened.wait()
        raise Unavailable("no builder image here")


class NoInstances:
    """The instance manager as these builds see it: none ever boots (the gate fails first),
    so the leftover-VM sweep after a failure or cancel finds nothing."""

    def find(self, tags: dict[str, str] | None = None) -> list[object]:
        return []


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def manager(tmp_path: Path, gate: Gate) -> AsyncIterator[BuildManager]:
    store = Store(tmp_path / "ember.db")
    settings = BuildSettings(
        root=tmp_path / "builds", registry_host="127.0.0.1:4973",
        own_hosts=frozenset({"127.0.0.1:4973"}), relay="10.100.0.1:4974", default_disk_gb=1,
        secrets_dir=tmp_path / "secrets",
    )  # fmt: skip
    instances = cast(Any, NoInstances())
    manager = BuildManager(
        store, settings, instances=instances, images=cast(Any, None), registry=cast(Any, None),
        volumes=VolumeManager(store, tmp_path), templates=cast(Any, None), debian_image=gate,
        mint_token=lambda: "t",
    )  # fmt: skip
    settings.root.mkdir()
    yield manager
    gate.opened.set()
    await manager.close()


async def chunks(data: bytes = b"source") -> AsyncIterator[bytes]:
    yield data


async def submit(manager: BuildManager, builder: str = "b1", **fields: str) -> str:
    form = parse_build_form({"builder_id": builder, "dockerfile": "FROM x\n", **fields}, "x")
    record = await manager.create(chunks(), form.options, tags=form.tags, secrets=form.secrets)
    return record.id


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_one_build_at_a_time_with_a_visible_queue(manager: BuildManager, gate: Gate) -> None:
    await manager.create_builder(name="b", disk_size_gb=1, id="b1")
    first, second = await submit(manager), await submit(manager)
    await settle()
    assert manager.get(first).status == BuildStatus.BUILDING
    assert manager.get(second).status == BuildStatus.QUEUED
    assert manager.queue_position(manager.get(second)) == 1
    assert manager.active_build("b1") == first and manager.queued_builds("b1") == [second]
    assert gate.calls == 1  # the second has not started
    with pytest.raises(Conflict) as busy:
        await manager.delete_builder("b1")
    assert busy.value.code == "builder_in_use"
    with pytest.raises(Conflict):
        await manager.prune_builder("b1")
    gate.opened.set()
    for _ in range(100):
        if manager.get(second).status == BuildStatus.FAILED:
            break
        await asyncio.sleep(0.01)
    for build_id in (first, second):
        record = manager.get(build_id)
        assert record.status == BuildStatus.FAILED and record.error == "no builder image here"
        assert record.completed_at is not None and record.duration_ms is not None
    statuses = [e.status for e in manager.events.read(first) if e.type == "status"]
    assert statuses == ["queued", "building", "failed"]
    assert manager.active_build("b1") is None and manager.queued_builds("b1") == []
    await manager.delete_builder("b1")
    with pytest.raises(NotFound):
        manager.get_builder("b1")


async def test_cancel_queued_and_running(manager: BuildManager) -> None:
    await manager.create_builder(name=None, disk_size_gb=1, id="b1")
    running, waiting = await submit(manager), await submit(manager)
    await settle()
    await manager.cancel(waiting)
    assert manager.get(waiting).status == BuildStatus.CANCELLED
    assert manager.queued_builds("b1") == []
    await manager.cancel(running)
    assert manager.get(running).status == BuildStatus.CANCELLED
    with pytest.raises(Conflict) as ended:
        await manager.cancel(running)
    assert ended.value.code == "build_completed"
    events = [e.status for e in manager.events.read(running) if e.type == "status"]
    assert events == ["queued", "building", "cancelled"]


async def test_late_subscriber_replays_and_follows(manager: BuildManager, gate: Gate) -> None:
    await manager.create_builder(name=None, disk_size_gb=1, id="b1")
    build_id = await submit(manager)
    await settle()

    async def collect() -> list[str]:
        return [e.status or "" async for e in manager.events.follow(build_id, follow=True)
                if e.type == "status"]  # fmt: skip

    follower = asyncio.create_task(collect())
    await settle()
    gate.opened.set()
    assert await asyncio.wait_for(follower, 10) == ["queued", "building", "failed"]
    late = [e.status async for e in manager.events.follow(build_id, follow=True)]
    assert [s for s in late if s] == ["queued", "building", "failed"]


async def test_default_builder_made_on_first_use(manager: BuildManager) -> None:
    build_id = await submit(manager, builder="default")
    assert manager.get_builder("default").disk_size_gb == 1
    assert manager.get(build_id).options.builder_id == "default"


async def test_refusals_make_nothing(manager: BuildManager, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        await submit(manager, builder="nope")
    await manager.create_builder(name=None, disk_size_gb=1, id="b1")
    with pytest.raises(Conflict):
        await manager.create_builder(name=None, disk_size_gb=1, id="b1")
    with pytest.raises(InvalidArgument) as unknown:
        await submit(manager, secrets='[{"id": "missing"}]')
    assert unknown.value.code == "unknown_secret"
    form = parse_build_form({"builder_id": "b1"}, "x")
    with pytest.raises(InvalidArgument):
        await manager.create(chunks(b""), form.options, tags={}, secrets={})
    assert manager.find() == []
    assert list((tmp_path / "builds").iterdir()) == []


async def test_server_side_secret_and_prune(manager: BuildManager, tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "npm_token").write_text("s3cret")
    await manager.create_builder(name=None, disk_size_gb=1, id="b1")
    volume = manager.get_builder("b1").volume_id
    pruned = await manager.prune_builder("b1")
    assert pruned.status == "ready" and pruned.volume_id != volume
    build_id = await submit(manager, secrets='[{"id": "npm_token"}]')
    assert manager._secrets[build_id] == {"npm_token": "s3cret"}
    assert "s3cret" not in manager.get(build_id).model_dump_json()  # never stored


async def test_timeout_fails_the_build(manager: BuildManager) -> None:
    await manager.create_builder(name=None, disk_size_gb=1, id="b1")
    build_id = await submit(manager, timeout_seconds="1")  # the gate never opens in time
    for _ in range(300):
        if manager.get(build_id).status == BuildStatus.FAILED:
            break
        await asyncio.sleep(0.01)
    record = manager.get(build_id)
    assert record.status == BuildStatus.FAILED and record.error == "timed out after 1 s"
    assert manager.active_build("b1") is None


async def test_builds_cut_short_by_a_restart_fail(manager: BuildManager) -> None:
    await manager.create_builder(name=None, disk_size_gb=1, id="b1")
    build_id = await submit(manager)
    await settle()
    await manager.close()  # its task ends; the record is then put back as a killed server
    manager.builds.update(build_id, lambda r: setattr(r, "status", BuildStatus.BUILDING))
    await manager.open()
    record = manager.get(build_id)
    assert record.status == BuildStatus.FAILED and record.error == "the server restarted"
