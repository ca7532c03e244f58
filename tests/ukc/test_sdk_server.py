"""The official SDK against a real `ember serve`, where no VM is needed: refusals named
per item, the errors the SDK raises, pagination and tag filters (on volumes)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from unikraft_cloud import (
    AlreadyExistsError,
    AuthenticationError,
    NotFoundError,
    UnikraftCloud,
    UnikraftCloudError,
)
from unikraft_cloud.api.platform import models_gen as models
from unikraft_cloud.core.response import raise_for_envelope

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
        with pytest.raises(UnikraftCloudError, match="not a systemd calendar expression"):
            nightly = {"name": "nightly", "when": "at dawn", "action": "stop"}
            await ukc.instances.create(image="x", autostart=True, schedules=[nightly])
        with pytest.raises(UnikraftCloudError, match="multiple of 1024"):
            await ukc.volumes.create(name="odd", size_mb=1000)
        with pytest.raises(NotFoundError) as missing:
            await ukc.instances.get(name="ghost")
        assert missing.value.absent
        await ukc.instances.get(name="ghost").delete(missing_ok=True)  # nothing to do

    run(server, scenario)


def test_templates_without_vms_missing_and_refused(server: EmberServer) -> None:
    """Listed (none yet), a missing one `NotFoundError` whichever way it is named (a
    clone of it, a save of a missing instance, an autoscale configuration's template),
    and what a template or a clone cannot take refused by name."""

    async def scenario(ukc: UnikraftCloud) -> None:
        api = ukc.api.platform.instances
        assert await ukc.templates.list() == []
        with pytest.raises(NotFoundError) as missing:
            await ukc.templates.get(name="ghost")
        assert missing.value.absent
        await ukc.templates.get(name="ghost").delete(missing_ok=True)  # nothing to do
        with pytest.raises(NotFoundError):
            await ukc.instances.create(template={"name": "ghost"}, autostart=True)
        with pytest.raises(NotFoundError):
            item = models.CreateTemplateInstancesRequestItem(name="ghost")
            raise_for_envelope(await api.create_template_instances(body=[item]))
        with pytest.raises(UnikraftCloudError, match="image: a clone takes everything else"):
            await ukc.instances.create(template={"name": "ghost"}, image="x", autostart=True)
        with pytest.raises(UnikraftCloudError, match="create_args: gpus"):
            seed = {"name": "new", "prepare": True, "create_args": {"image": "x", "gpus": []}}
            await ukc.instances.create(template=seed)
        with pytest.raises(UnikraftCloudError, match="a template cannot change"):
            patch = models.UpdateTemplateInstancesRequestItem.model_validate(
                {"name": "ghost", "prop": "autokill", "op": "set"}
            )
            raise_for_envelope(await api.update_template_instances(body=[patch]))

        group = await ukc.services.create(name="cloned", services=[{"port": 8082}])
        assert group.uuid is not None
        auto = ukc.api.platform.autoscale
        body = models.CreateAutoscaleConfigurationByServiceGroupUUIDRequest.model_validate(
            {"uuid": group.uuid, "max_size": 2, "create_args": {"template": {"name": "ghost"}}}
        )
        with pytest.raises(NotFoundError):
            raise_for_envelope(
                await auto.create_autoscale_configuration_by_service_group_uuid(
                    group.uuid, body=body
                )
            )
        await ukc.services.get(name="cloned").delete()

    run(server, scenario)


def test_autoscale_configuration_and_policies_through_the_sdk(server: EmberServer) -> None:
    """The SDK's plumbing client (it has no resource layer for autoscale), each answer
    checked by its own `raise_for_envelope`; the configuration is Ember's own too."""

    async def scenario(ukc: UnikraftCloud) -> None:
        api = ukc.api.platform.autoscale
        group = await ukc.services.create(name="web", services=[{"port": 8080}])
        assert group.uuid is not None and group.autoscale is False
        step = models.AutoscalePolicyStep
        cpu = models.AutoscalePolicy(name="cpu", metric="cpu", adjustment_type="change",
                                     steps=[step(adjustment=1, lower_bound=70),
                                            step(adjustment=-1, upper_bound=20)])  # fmt: skip
        config = models.CreateAutoscaleConfigurationsRequestConfiguration(
            name="web", min_size=1, max_size=3, cooldown_time_ms=5000, policies=[cpu],
            create_args=models.ConfigurationInstanceCreateArgs.model_validate(
                {"image": "docker.io/library/nginx:alpine", "memory_mb": 256, "args": ["-g"]}
            ),
        )  # fmt: skip
        created = await api.create_autoscale_configurations(body=[config])
        raise_for_envelope(created)
        assert created.data and created.data.service_groups
        assert created.data.service_groups[0].uuid == group.uuid
        got = await api.get_autoscale_configurations_by_service_group_uuid(group.uuid)
        raise_for_envelope(got)
        [seen] = got.data.service_groups if got.data and got.data.service_groups else [None]
        assert seen is not None and seen.enabled and seen.max_size == 3
        assert [p.name for p in seen.policies or []] == ["cpu"]
        assert seen.policies and seen.policies[0].steps == cpu.steps
        assert (await ukc.services.get(name="web")).autoscale is True
        own = _ember(server, f"/service-groups/{group.uuid}/autoscale")  # Ember's own API
        assert own["max_size"] == 3 and own["create_args"]["size"] == "256MB"

        inflight = models.AutoscalePolicy(metric="cpu", adjustment_type="exact",
                                          steps=[step(adjustment=2, lower_bound=90)])  # fmt: skip
        body = models.CreateAutoscaleConfigurationPolicyRequest(name="burst", type=inflight)
        raise_for_envelope(await api.create_autoscale_configuration_policy(group.uuid, body=body))
        read = await api.get_autoscale_configuration_policy_by_name(group.uuid, "burst")
        raise_for_envelope(read)
        assert read.data and read.data.policies and read.data.policies[0].policy
        assert read.data.policies[0].policy.adjustment_type == "exact"
        with pytest.raises(AlreadyExistsError):
            raise_for_envelope(
                await api.create_autoscale_configuration_policy(group.uuid, body=body)
            )
        gone = models.DeletePolicyRequest(name="burst")
        raise_for_envelope(await api.delete_autoscale_configuration_policies(group.uuid, body=gone))
        with pytest.raises(NotFoundError):
            raise_for_envelope(
                await api.get_autoscale_configuration_policy_by_name(group.uuid, "burst")
            )

        deleted = await api.delete_autoscale_configurations(body=[models.NameOrUUID(name="web")])
        raise_for_envelope(deleted)
        again = await api.get_autoscale_configurations(uuid=[group.uuid])
        raise_for_envelope(again)
        assert again.data and again.data.service_groups
        assert again.data.service_groups[0].enabled is False
        assert (await ukc.services.get(name="web")).autoscale is False
        await ukc.services.get(name="web").delete()

    run(server, scenario)


def test_autoscale_of_a_missing_group_is_not_found(server: EmberServer) -> None:
    async def scenario(ukc: UnikraftCloud) -> None:
        api = ukc.api.platform.autoscale
        for answer in (
            await api.get_autoscale_configurations_by_service_group_uuid("ghost"),
            await api.delete_autoscale_configurations(body=[models.NameOrUUID(name="ghost")]),
            await api.get_autoscale_configuration_policy_by_name("ghost", "cpu"),
        ):
            with pytest.raises(NotFoundError):
                raise_for_envelope(answer)
        group = await ukc.services.create(name="plain", services=[{"port": 8081}])
        assert group.uuid is not None
        with pytest.raises(UnikraftCloudError, match="create_args: gpus"):
            body = models.CreateAutoscaleConfigurationByServiceGroupUUIDRequest.model_validate(
                {"uuid": group.uuid, "max_size": 2, "create_args": {"image": "x", "gpus": 1}}
            )
            raise_for_envelope(
                await api.create_autoscale_configuration_by_service_group_uuid(
                    group.uuid, body=body
                )
            )
        with pytest.raises(NotFoundError):  # no configuration to delete
            raise_for_envelope(
                await api.delete_autoscale_configurations_by_service_group_uuid(group.uuid)
            )
        await ukc.services.get(name="plain").delete()

    run(server, scenario)


def _ember(server: EmberServer, path: str) -> dict[str, Any]:
    """A GET on Ember's own API."""
    headers = {"Authorization": f"Bearer {server.token()}"}
    answer = httpx.get(f"{server.url}{path}", headers=headers, timeout=30)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


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
