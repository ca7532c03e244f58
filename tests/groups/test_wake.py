"""Fast tests of the wake path's failures and joins: the group manager over a stand-in
instance manager (restore fails or is slow on demand) and the waker's HTTP answer
over its real Unix socket."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ember.errors import EmberError, NotFound, Unavailable
from ember.groups import (
    CreateServiceGroupRequest,
    GroupManager,
    InstanceServiceGroupRequest,
    MemberRecord,
    ScaleToZeroRequest,
)
from ember.groups import manager as group_manager
from ember.groups.requests import scale_to_zero
from ember.groups.waker import Waker
from ember.ingress.termination import Terminator
from ember.instances import State
from ember.instances.models import InstanceRecord
from ember.store import Store


class Instances:
    """What the group manager uses of the instance manager; `restore` fails or waits."""

    def __init__(self, fail: str | None = None) -> None:
        self.records: dict[str, InstanceRecord] = {}
        self.fail, self.restores = fail, 0

    def add(self, name: str, state: State) -> InstanceRecord:
        record = InstanceRecord(id=f"id-{name}", name=name, image="i", image_digest="d",
                                state=state, memory_bytes=1, overlay_bytes=1)  # fmt: skip
        self.records[record.id] = record
        return record

    def get(self, ref: str) -> InstanceRecord:
        if ref not in self.records:
            raise NotFound(f"instance {ref!r} not found")
        return self.records[ref]

    def lease(self, record: InstanceRecord) -> Any:
        ip = "127.0.0.1" if record.name == "local" else f"10.0.0.{len(record.name)}"
        return SimpleNamespace(ip=ip)

    async def standby(self, ref: str, origin: str) -> InstanceRecord:
        self.records[ref].state = State.STANDBY
        return self.records[ref]

    async def restore(self, ref: str) -> InstanceRecord:
        self.restores += 1
        if not self.fail:  # as the real one: Running a moment before the restore returns
            self.records[ref].state = State.RUNNING
        await asyncio.sleep(0.05)
        if self.fail:
            raise EmberError(self.fail)
        return self.records[ref]


class Ingresses:
    proxy = SimpleNamespace(listen_address="127.0.0.1")  # where the TCP services listen

    def __init__(self, caddy_storage: Path = Path("/nonexistent")) -> None:
        self.published: list[Any] = []
        # The real one, over a stand-in of Caddy's storage (TLS-terminated TCP).
        self.terminator = Terminator(caddy_storage, list)

    async def publish(self, publisher: str, routes: list[Any]) -> None:
        self.published = routes

    async def upstream_requests(self) -> dict[str, int]:
        return {}


async def grouped(
    tmp_path: Path,
    instances: Instances,
    names: tuple[str, ...] = ("asleep",),
    state: State = State.STANDBY,
    destination_port: int = 8080,
    **limits: int,
) -> tuple[GroupManager, str]:
    stand_in: Any = instances
    manager = GroupManager(Store(tmp_path / "db"), stand_in, Ingresses(), tmp_path / "w.sock")  # type: ignore[arg-type]
    service = {"port": 80, "destination_port": destination_port}
    group = await manager.create(
        CreateServiceGroupRequest.model_validate({"name": "g", "services": [service], **limits})
    )
    for name in names:
        record = instances.add(name, state)
        manager.members.insert(MemberRecord(id=record.id, name=record.name, group_id=group.id))
    return manager, group.id


def test_a_request_just_placed_counts_before_caddy_counts_it(tmp_path: Path) -> None:
    """Soft limit 1, two standby instances: the second request, arriving right after the
    first one's wake (Caddy has not counted the first yet), wakes the other instance."""

    async def scenario() -> tuple[list[str], int]:
        instances = Instances()
        manager, group_id = await grouped(
            tmp_path, instances, ("d", "ee"), soft_limit=1, hard_limit=4
        )
        places = [await manager.place(group_id, 80), await manager.place(group_id, 80)]
        await manager.close()
        return places, instances.restores

    places, restores = asyncio.run(scenario())
    assert sorted(places) == ["10.0.0.1:8080", "10.0.0.2:8080"] and restores == 2


def balanced(manager: GroupManager) -> list[str]:
    """The upstreams Caddy balances to by itself, as last published."""
    published: list[Any] = manager.ingresses.published  # type: ignore[attr-defined]
    proxy = published[0].routes[0]["handle"][1]
    return [u["dial"] for u in proxy["upstreams"]] if "rewrite" not in proxy else []


def test_an_instance_is_not_balanced_to_while_its_wake_holds_requests(tmp_path: Path) -> None:
    """Running before the wake's requests went: Caddy, not knowing of them, would give
    it more than the soft limit; it is published once the wake is over."""

    async def scenario() -> tuple[list[str], list[str]]:
        instances = Instances()
        manager, group_id = await grouped(tmp_path, instances, ("d",), soft_limit=1)
        place = asyncio.create_task(manager.place(group_id, 80))
        await asyncio.sleep(0.02)  # restoring: Running already
        assert instances.records["id-d"].state == State.RUNNING
        await manager._pass()
        during = balanced(manager)
        await place
        await manager._pass()
        after = balanced(manager)
        await manager.close()
        return during, after

    during, after = asyncio.run(scenario())
    assert during == [] and after == ["10.0.0.1:8080"]


def test_a_running_instance_is_served_once_its_port_accepts(tmp_path: Path) -> None:
    """Running is not listening: the request is held (not a 502) until the port
    accepts, and the routes list the instance only from then on."""

    async def scenario() -> tuple[list[str], str, list[str]]:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
        instances = Instances()
        manager, group_id = await grouped(
            tmp_path, instances, ("local",), State.RUNNING, destination_port=port
        )
        instances.records["id-local"].started_at = datetime.now(UTC)
        await manager._pass()
        before = balanced(manager)
        place = asyncio.create_task(manager.place(group_id, 80))
        await asyncio.sleep(0.3)
        assert not place.done()
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        try:
            address = await asyncio.wait_for(place, 10)
            await manager._pass()
            return before, address, balanced(manager)
        finally:
            server.close()
            await manager.close()

    before, address, after = asyncio.run(scenario())
    assert before == [] and address.startswith("127.0.0.1:") and after == [address]


def test_open_connections_are_looked_at_only_when_they_can_keep_an_instance_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Policy `on`: the conntrack table is not dumped while the instance is busy or
    within its cooldown; at its end an open connection keeps it up, and is looked at
    every pass until it closes; the cooldown then runs from its close."""
    flows: list[str] = []
    dumps: list[float] = []

    async def established() -> list[str]:
        dumps.append(asyncio.get_running_loop().time())
        return list(flows)

    monkeypatch.setattr(group_manager, "_established", established)

    async def scenario() -> list[tuple[int, State]]:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        instances = Instances()
        manager, _ = await grouped(
            tmp_path, instances, ("local",), State.RUNNING, destination_port=port
        )
        policy = ScaleToZeroRequest.model_validate({"policy": "on", "cooldown_time_ms": 300})
        manager.members.update("id-local", lambda m: setattr(
            m, "scale_to_zero", scale_to_zero(policy)))  # fmt: skip
        instance = instances.records["id-local"]
        seen: list[tuple[int, State]] = []

        async def passes(seconds: float) -> None:
            for _ in range(round(seconds / 0.05)):
                await manager._pass()
                await asyncio.sleep(0.05)
            seen.append((len(dumps), instance.state))

        try:
            flows.append("127.0.0.1")
            await passes(0.2)  # within the cooldown: not looked at
            await passes(0.3)  # its end: looked at, kept up, then looked at every pass
            flows.clear()
            await passes(0.15)  # closed: the cooldown starts again
            await passes(0.4)  # and ends: asleep
        finally:
            server.close()
            await manager.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == (0, State.RUNNING), seen
    assert seen[1][0] >= 2 and seen[1][1] == State.RUNNING, seen
    assert seen[2][1] == State.RUNNING and seen[3][1] == State.STANDBY, seen


def test_a_standby_never_seen_listening_is_served_once_its_port_accepts(
    tmp_path: Path,
) -> None:
    """Put in standby before it listened: the restored guest is still starting its
    program, so the held request waits for the port (not a 502)."""

    async def scenario() -> str:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
        instances = Instances()
        manager, group_id = await grouped(tmp_path, instances, ("local",), destination_port=port)
        instances.records["id-local"].started_at = datetime.now(UTC)
        place = asyncio.create_task(manager.place(group_id, 80))
        await asyncio.sleep(0.3)
        assert instances.restores == 1 and not place.done()
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        try:
            return await asyncio.wait_for(place, 10)
        finally:
            server.close()
            await manager.close()

    assert asyncio.run(scenario()).startswith("127.0.0.1:")


def test_a_burst_to_an_asleep_group_restores_once(tmp_path: Path) -> None:
    async def scenario() -> tuple[set[str], int]:
        instances = Instances()
        manager, group_id = await grouped(tmp_path, instances)
        places = await asyncio.gather(*(manager.place(group_id, 80) for _ in range(20)))
        await manager.close()
        return set(places), instances.restores

    places, restores = asyncio.run(scenario())
    assert places == {"10.0.0.6:8080"} and restores == 1


def test_a_failed_wake_answers_every_held_request_503_with_the_reason(tmp_path: Path) -> None:
    async def scenario() -> list[BaseException | str]:
        instances = Instances(fail="the saved VM is unreadable")
        manager, group_id = await grouped(tmp_path, instances)
        answers = await asyncio.gather(
            *(manager.place(group_id, 80) for _ in range(3)), return_exceptions=True
        )
        await manager.close()
        return list(answers)

    answers = asyncio.run(scenario())
    assert all(isinstance(a, Unavailable) for a in answers), answers
    assert "waking instance 'asleep' failed: the saved VM is unreadable" in str(answers[0])


def test_the_waker_answers_the_address_or_the_status_and_reason(tmp_path: Path) -> None:
    async def place(group_id: str, port: int) -> str:
        if group_id == "full":
            raise Unavailable("web: all 1 instances are at the hard limit of 2")
        return f"10.0.0.9:{port}"

    async def ask(socket: Path, path: str) -> bytes:
        reader, writer = await asyncio.open_unix_connection(str(socket))
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = await reader.read()
        writer.close()
        return answer

    async def scenario() -> list[bytes]:
        waker = Waker(tmp_path / "waker.sock", place)
        await waker.start()
        try:
            return [
                await ask(waker.socket_path, "/wake/g1/8080?q=1"),
                await ask(waker.socket_path, "/wake/full/80"),
                await ask(waker.socket_path, "/other"),
            ]
        finally:
            await waker.close()

    served, full, other = asyncio.run(scenario())
    assert served.startswith(b"HTTP/1.1 204") and b"X-Ember-Upstream: 10.0.0.9:8080" in served
    assert full.startswith(b"HTTP/1.1 503") and b"hard limit of 2" in full
    assert other.startswith(b"HTTP/1.1 404")


def test_an_instance_stopped_by_the_user_is_not_woken(tmp_path: Path) -> None:
    async def scenario() -> str:
        instances = Instances()
        manager, group_id = await grouped(tmp_path, instances)
        instances.records["id-asleep"].state = State.STOPPED
        instances.records["id-asleep"].stop_reason = 15  # the user's stop
        try:
            await manager.place(group_id, 80)
        except Unavailable as exc:
            return exc.message
        finally:
            await manager.close()
        return "placed"

    assert "no instance that can serve" in asyncio.run(scenario())


def test_a_patch_is_checked_whole_before_anything_changes(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        instances = Instances()
        manager, _ = await grouped(tmp_path, instances)
        loose = instances.add("loose", State.RUNNING)
        refusals = []
        for given, group in (({"scale_to_zero"}, None), ({"service_group"}, "nowhere")):
            request = InstanceServiceGroupRequest(name=group) if group else None
            try:
                manager.check_update(loose.id, given, request, ScaleToZeroRequest())
            except EmberError as exc:
                refusals.append(exc.code)
        moved = manager.check_update(
            loose.id, {"service_group"}, InstanceServiceGroupRequest(name="g"), None
        )
        assert manager.members.get(loose.id) is None  # checked only
        await manager.apply_update(moved)
        assert manager.members.get(loose.id) is not None
        await manager.close()
        return refusals

    assert asyncio.run(scenario()) == ["scale_to_zero_requires_service_group", "not_found"]
