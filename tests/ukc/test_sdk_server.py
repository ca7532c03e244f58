"""The official SDK against a real `ember serve`, where no VM is needed: refusals named
per item, the errors the SDK raises, pagination and tag filters (on volumes)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
from unikraft_cloud import (
    AlreadyExistsError,
    AuthenticationError,
    NotFoundError,
    UnikraftCloud,
    UnikraftCloudError,
)

from ember.testkit.ember_server import EmberServer
from tests.conftest import running_server

pytestmark = pytest.mark.server  # starts a real `ember serve`


@pytest.fixture(scope="module")
def server() -> Iterator[EmberServer]:
    with running_server() as server:
        yield server


def run(server: EmberServer, scenario: Callable[[UnikraftCloud], Awaitable[None]]) -> None:
    async def main() -> None:
        async with UnikraftCloud(base_url=server.url, token=server.token()) as ukc:
            await scenario(ukc)

    asyncio.run(main())


def test_a_wrong_token_is_an_authentication_error(server: EmberServer) -> None:
    async def main() -> None:
        async with UnikraftCloud(base_url=server.url, token="nope") as ukc:
            with pytest.raises(AuthenticationError):
                await ukc.instances.list()

    asyncio.run(main())


def test_what_ember_cannot_do_is_refused_per_item_with_its_name(server: EmberServer) -> None:
    async def scenario(ukc: UnikraftCloud) -> None:
        with pytest.raises(UnikraftCloudError, match="gpus is not supported"):
            await ukc.instances.create(image="x", gpus=1, autostart=True)
        with pytest.raises(UnikraftCloudError, match="autostart"):
            await ukc.instances.create(image="x")
        with pytest.raises(UnikraftCloudError, match="multiple of 1024"):
            await ukc.volumes.create(name="odd", size_mb=1000)
        with pytest.raises(NotFoundError) as missing:
            await ukc.instances.get(name="ghost")
        assert missing.value.absent
        await ukc.instances.get(name="ghost").delete(missing_ok=True)  # nothing to do

    run(server, scenario)


def test_templates_and_autoscale_answer_not_supported_yet(server: EmberServer) -> None:
    async def scenario(ukc: UnikraftCloud) -> None:
        platform = ukc.api.platform
        for answer in (
            await platform.instances.get_template_instances(),
            await platform.autoscale.get_autoscale_configurations(),
        ):
            assert answer.status == "error"
            assert "not supported by this Ember yet" in str(answer.model_dump())

    run(server, scenario)


def test_names_are_unique_and_listings_page_and_filter(server: EmberServer) -> None:
    async def scenario(ukc: UnikraftCloud) -> None:
        for index in range(3):
            await ukc.volumes.create(name=f"vol-{index}", size_mb=1024,
                                     tags=["kind=db"] if index else ["kind=cache"])  # fmt: skip
        with pytest.raises(AlreadyExistsError):
            await ukc.services.create(name="g", services=[{"port": 9000}])
            await ukc.services.create(name="g", services=[{"port": 9001}])
        paged = await ukc.volumes.list(page_size=1)
        assert [v.name for v in paged] == ["vol-0", "vol-1", "vol-2"]
        assert [v.name for v in await ukc.volumes.list(tags=["kind=db"])] == ["vol-1", "vol-2"]
        deleted = await ukc.volumes.delete(["vol-0", "vol-1", "vol-2"])
        assert len(deleted) == 3
        await ukc.services.get(name="g").delete()
        [quota] = await ukc.users.quotas()
        assert quota.used is not None and quota.used.volumes == 0

    run(server, scenario)
