"""The `/v1` mapping without QEMU: Ember's records and errors in the seed's shapes, read
back by the official SDK's own envelope code (`unikraft_cloud.core.response`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from unikraft_cloud import AlreadyExistsError, NotFoundError
from unikraft_cloud.api.platform import models
from unikraft_cloud.core.response import envelope_entries

from ember.errors import Conflict, InvalidArgument, NotFound
from ember.groups.autoscale.models import AutoscalePolicy, AutoscalePolicyStep, AutoscaleRecord
from ember.groups.models import ServiceGroupRecord
from ember.instances import InstanceRecord, State
from ember.instances.stopreason import StopReason
from ember.snapshots.models import SnapshotRecord
from ember.ukc import convert
from ember.ukc.envelope import Timer, envelope, item_error, ok
from ember.ukc.instances import member_args
from ember.ukc.requests import unsupported

M = TypeVar("M", bound=BaseModel)


def record(**fields: object) -> InstanceRecord:
    base: dict[str, object] = {
        "id": "a" * 24, "name": "web", "image": "docker.io/library/web:latest",
        "image_digest": "sha256:" + "0" * 64, "memory_bytes": 256 * convert.MB,
        "overlay_bytes": 1 << 30, "tags": {"app": "web", "batch": ""},
    }  # fmt: skip
    return InstanceRecord.model_validate({**base, **fields})


def sdk(model: type[M], answer: JSONResponse) -> M:
    """What the SDK's transport makes of the answer: its generated model."""
    return model.model_validate(body(answer))


def body(answer: JSONResponse) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(bytes(answer.body))
    return parsed


def test_an_instance_reads_as_the_sdk_instance_with_lower_case_state_and_stop_reason() -> None:
    stopped = record(state=State.STOPPED, stop_reason=int(StopReason.USER | StopReason.PLATFORM
                     | StopReason.APP | StopReason.KERNEL), exit_code=0,
                     created_at=datetime(2026, 1, 2, tzinfo=UTC))  # fmt: skip
    answer = envelope("instances", [ok(convert.instance(stopped, None, [], None, []))], Timer())
    parsed = sdk(models.GetInstancesResponse, answer)
    [instance] = envelope_entries(parsed, "instances")
    assert (instance.uuid, instance.state, instance.memory_mb) == ("a" * 24, "stopped", 256)
    assert instance.stop_reason == 15 and sorted(instance.tags) == ["app=web", "batch"]
    assert instance.created_at == datetime(2026, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize("state", list(State))
def test_every_ember_state_is_one_of_the_seed_states(state: State) -> None:
    assert convert.STATES[state] in models.InstanceState.__args__  # type: ignore[attr-defined]


def test_tags_round_trip_between_the_list_and_ember_dict() -> None:
    assert convert.tags_in(["app=web", "batch", "k=a=b"]) == {"app": "web", "batch": "", "k": "a=b"}
    assert convert.tags_out({"app": "web", "batch": ""}) == ["app=web", "batch"]


def test_a_batch_with_a_missing_item_is_partial_success_and_the_sdk_raises_not_found() -> None:
    items = [ok({"uuid": "a" * 24, "name": "web", "state": "stopped"}),
             item_error(NotFound("instance 'ghost' not found"), {"name": "ghost"})]  # fmt: skip
    answer = envelope("instances", items, Timer())
    assert answer.status_code == 200
    answered = body(answer)
    assert answered["status"] == "partial_success"
    assert answered["data"]["instances"][1]["error"] == 8
    with pytest.raises(NotFoundError) as raised:
        envelope_entries(sdk(models.StopInstancesResponse, answer), "instances")
    assert raised.value.absent and [r.name for r in raised.value.results] == ["web"]


def test_a_taken_name_is_error_23_which_the_sdk_raises_as_already_exists() -> None:
    taken = Conflict("service group 'api' already exists", code="already_exists")
    answer = envelope("service_groups", [item_error(taken, {"name": "api"})], Timer())
    assert body(answer)["status"] == "error"
    with pytest.raises(AlreadyExistsError):
        envelope_entries(sdk(models.CreateServiceGroupResponse, answer), "service_groups")


def test_what_ember_cannot_do_is_refused_by_name_never_ignored() -> None:
    with pytest.raises(InvalidArgument, match="gpus, replicas are not supported") as refused:
        unsupported({"gpus": 1, "replicas": 2, "features": []}, ("gpus", "replicas", "features"),
                    "instance")  # fmt: skip
    assert refused.value.code == "not_supported"
    unsupported({"gpus": 0, "replicas": None}, ("gpus", "replicas"), "instance")  # asks nothing


def test_volume_sizes_are_whole_gib_or_refused() -> None:
    assert convert.size_gb(2048) == 2
    with pytest.raises(InvalidArgument, match="multiple of 1024"):
        convert.size_gb(1000)


def test_a_reference_names_exactly_one_of_uuid_or_name_and_matches_exactly() -> None:
    web = record()
    assert convert.pick({"name": "web"}, lambda ref: web, "instance") is web
    with pytest.raises(NotFound):  # Ember's lookup takes id prefixes; the seed's does not
        convert.pick({"uuid": "aaa"}, lambda ref: web, "instance")
    with pytest.raises(InvalidArgument, match="exactly one"):
        convert.pick({"uuid": "a" * 24, "name": "web"}, lambda ref: web, "instance")


def test_an_autoscale_configuration_reads_as_the_sdk_shape_with_whole_bounds() -> None:
    group = ServiceGroupRecord.model_validate(
        {"id": "g" * 24, "name": "web", "services": [], "soft_limit": 1, "hard_limit": 2}
    )
    steps = [AutoscalePolicyStep(adjustment=1, lower_bound=70.0),
             AutoscalePolicyStep(adjustment=-1, lower_bound=2.5, upper_bound=20.0)]  # fmt: skip
    config = AutoscaleRecord(id=group.id, name=group.id, min_size=1, max_size=3,
                             warmup_time_ms=0, cooldown_time_ms=0, create_args={"image": "x"},
                             policies=[AutoscalePolicy(name="cpu", steps=steps)])  # fmt: skip
    out = convert.autoscale(group, config)
    assert out["policies"][0]["steps"][0] == {"adjustment": 1, "lower_bound": 70,
                                              "upper_bound": None}  # fmt: skip
    assert isinstance(out["policies"][0]["steps"][0]["lower_bound"], int)
    assert out["policies"][0]["steps"][1]["lower_bound"] == 2.5  # not whole: as it is
    out["policies"][0]["steps"].pop()  # (the SDK's steps are integers: see README gaps)
    answer = sdk(models.GetAutoscaleConfigurationsResponse,
                 envelope("service_groups", [ok(out)], Timer()))  # fmt: skip
    assert answer.data and answer.data.service_groups
    seen = answer.data.service_groups[0]
    assert seen.enabled and seen.max_size == 3 and seen.policies and seen.policies[0].name == "cpu"


def test_autoscale_members_are_made_from_the_seed_create_fields_only() -> None:
    args = member_args({"image": "x", "memory_mb": 256, "args": ["-v"], "tags": ["a=b"],
                        "restart_policy": "on-failure", "autostart": True})  # fmt: skip
    assert args == {"image": "x", "size": "256MB", "cmd": ["-v"], "tags": {"a": "b"},
                    "restart_policy": {"policy": "on_failure"}}  # fmt: skip
    for refused in ({"image": "x", "service_group": {}}, {"image": "x", "autostart": False}):
        with pytest.raises(InvalidArgument) as exc:
            member_args(refused)
        assert exc.value.code == "not_supported"


def template(**fields: object) -> SnapshotRecord:
    source = record(state=State.RUNNING, cmd=["serve"], tags={"app": "web"})
    base: dict[str, object] = {
        "id": "t" * 24, "name": "web-tpl", "kind": "Standby", "template": True,
        "source_instance_id": source.id, "source_instance_name": source.name,
        "source_hypervisor": "qemu", "source": source.model_dump(mode="json"),
    }  # fmt: skip
    return SnapshotRecord.model_validate({**base, **fields})


def test_a_template_reads_as_the_sdk_template_in_state_template() -> None:
    answer = envelope("instances", [ok(convert.template(template(), clones=2))], Timer())
    parsed = sdk(models.GetTemplateInstancesResponse, answer)
    [seen] = envelope_entries(parsed, "instances")
    assert (seen.uuid, seen.name, seen.state) == ("t" * 24, "web-tpl", "template")
    assert seen.memory_mb == 256 and seen.args == ["serve"] and seen.tags == ["app=web"]
    assert seen.model_extra == {"clones": 2}  # Ember's, kept by the model
    assert convert.template(template(), 0, details=False) == {"uuid": "t" * 24,
                                                              "name": "web-tpl"}  # fmt: skip


def test_an_autoscale_configuration_names_its_template() -> None:
    group = ServiceGroupRecord.model_validate(
        {"id": "g" * 24, "name": "web", "services": [], "soft_limit": 1, "hard_limit": 2}
    )
    config = AutoscaleRecord(id=group.id, name=group.id, min_size=1, max_size=3,
                             warmup_time_ms=0, cooldown_time_ms=0,
                             create_args={"template": "t" * 24})  # fmt: skip
    out = convert.autoscale(group, config, template())
    answer = sdk(models.GetAutoscaleConfigurationsResponse,
                 envelope("service_groups", [ok(out)], Timer()))  # fmt: skip
    assert answer.data and answer.data.service_groups
    seen = answer.data.service_groups[0].template
    assert seen is not None and (seen.uuid, seen.name) == ("t" * 24, "web-tpl")
