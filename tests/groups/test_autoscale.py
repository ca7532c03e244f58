"""Fast tests of autoscale: the policy arithmetic, bounds and validation (pure), and the
manager's decisions over fakes of the group and instance managers with a real store
(what it records, what it never does, and that a restart goes on where it stopped)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ember.errors import Conflict, InsufficientResources, InvalidArgument, NotFound
from ember.groups.autoscale import AutoscaleConfigRequest, AutoscaleManager, AutoscalePolicyRequest
from ember.groups.autoscale.cpu import vcpu_demand_seconds
from ember.groups.autoscale.members import make_member
from ember.groups.autoscale.models import AutoscaleRecord
from ember.groups.autoscale.policy import adjusted, decide, matching_step
from ember.groups.autoscale.requests import config_record
from ember.groups.manager import Member
from ember.groups.models import MemberRecord, Service, ServiceGroupRecord
from ember.images.models import utcnow
from ember.instances import CreateInstanceRequest, InstanceRecord, State
from ember.store import Store
from tests.groups.test_wake import Instances as WakeInstances
from tests.groups.test_wake import grouped

CREATE = {"image": "web:latest", "vcpus": 1, "size": "256MB"}
CPU_POLICY = {
    "name": "cpu",
    "metric": "cpu",
    "adjustment_type": "change",
    "steps": [
        {"adjustment": -1, "upper_bound": 15},
        {"adjustment": 0, "lower_bound": 15, "upper_bound": 40},
        {"adjustment": 1, "lower_bound": 40},
    ],
}


def request(**fields: Any) -> AutoscaleConfigRequest:
    body = {"min_size": 1, "max_size": 3, "warmup_time_ms": 0, "cooldown_time_ms": 0,
            "create_args": CREATE, "policies": [CPU_POLICY], **fields}  # fmt: skip
    return AutoscaleConfigRequest.model_validate(body)


def config(**fields: Any) -> AutoscaleRecord:
    return config_record("g" * 24, request(**fields), None)


# ---- the arithmetic ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "current", "adjustment", "size"),
    [
        ("change", 2, 1, 3), ("change", 2, -3, -1), ("exact", 2, 5, 5), ("exact", 4, 0, 0),
        # percentage: toward zero, but at least one member either way
        ("percentage", 4, 50, 6), ("percentage", 3, 50, 4), ("percentage", 1, 10, 2),
        ("percentage", 3, -50, 2), ("percentage", 1, -10, 0), ("percentage", 0, 100, 1),
        ("percentage", 5, 0, 5),
    ],
)  # fmt: skip
def test_adjustments(kind: Any, current: int, adjustment: int, size: int) -> None:
    assert adjusted(current, kind, adjustment) == size


def test_steps_match_lower_inclusive_upper_exclusive() -> None:
    policy = config().policies[0]
    assert [matching_step(policy, v).adjustment for v in (0, 14.9, 15, 39.9, 40, 1e9)] == [  # type: ignore[union-attr]
        -1, -1, 0, 0, 1, 1,
    ]  # fmt: skip
    gap = config(policies=[{**CPU_POLICY, "steps": [{"adjustment": 1, "lower_bound": 50}]}])
    assert matching_step(gap.policies[0], 10) is None


def test_decide_keeps_min_and_max_and_the_cooldown() -> None:
    now = utcnow()
    record = config()
    assert decide(record, 2, {"cpu": 90}, now).target == 3  # type: ignore[union-attr]
    capped = decide(record, 3, {"cpu": 90}, now)
    assert capped is None  # at max_size: nothing to do
    assert decide(record, 1, {"cpu": 1}, now) is None  # at min_size
    assert decide(record, 0, {}, now).target == 1  # type: ignore[union-attr]  # below min
    assert decide(record, 5, {}, now).target == 3  # type: ignore[union-attr]  # above max
    big = config(policies=[{**CPU_POLICY, "steps": [{"adjustment": 10, "lower_bound": 0}]}])
    proposal = decide(big, 1, {"cpu": 50}, now)
    assert (
        proposal is not None and proposal.target == 3 and "capped at max_size 3" in proposal.reason
    )
    cooling = config(cooldown_time_ms=60_000)
    cooling.last_scaled_at = now - timedelta(seconds=30)
    assert decide(cooling, 2, {"cpu": 90}, now) is None
    assert decide(cooling, 2, {"cpu": 90}, now + timedelta(seconds=31)) is not None
    assert decide(cooling, 0, {}, now).target == 1  # type: ignore[union-attr]  # min: at once


def test_the_largest_size_wins_among_policies() -> None:
    shrink = {**CPU_POLICY, "name": "shrink", "steps": [{"adjustment": -1}]}
    grow = {"name": "grow", "metric": "inflight", "adjustment_type": "exact",
            "steps": [{"adjustment": 3, "lower_bound": 2}]}  # fmt: skip
    record = config(policies=[shrink, grow])
    proposal = decide(record, 2, {"cpu": 5, "inflight": 4}, utcnow())
    assert proposal is not None and proposal.target == 3 and proposal.policy == "grow"
    proposal = decide(record, 2, {"cpu": 5, "inflight": 0}, utcnow())
    assert proposal is not None and proposal.target == 1 and proposal.policy == "shrink"
    # a metric not measured (no warm member yet) decides nothing
    assert decide(record, 2, {}, utcnow()) is None


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"min_size": 4}, "min_size 4 is above max_size 3"),
        ({"max_size": 0}, "max_size: 0 is not within"),
        ({"cooldown_time_ms": -1}, "cooldown_time_ms: must not be negative"),
        ({"policies": [{**CPU_POLICY, "steps": []}]}, "give 1-16 steps"),
        ({"policies": [CPU_POLICY, CPU_POLICY]}, "names must be unique"),
        ({"policies": [{**CPU_POLICY, "steps": [{"adjustment": 1, "lower_bound": 5,
                                                 "upper_bound": 5}]}]}, "below its upper"),
        ({"policies": [{**CPU_POLICY, "steps": [{"adjustment": 1, "upper_bound": 50},
                                                {"adjustment": 2, "lower_bound": 40}]}]},
         "steps overlap at 40"),
        ({"policies": [{**CPU_POLICY, "adjustment_type": "exact",
                        "steps": [{"adjustment": -1}]}]}, "exact adjustment is a size"),
        ({"create_args": {**CREATE, "name": "x"}}, "members are named by the group"),
        ({"create_args": {**CREATE, "vcpus": "2"}}, "create_args.vcpus"),
        ({"create_args": {"vcpus": 1}}, "create_args.image"),
    ],
)  # fmt: skip
def test_refusals_name_the_field(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        config(**fields)
    assert words in caught.value.message
    assert caught.value.code in ("invalid_autoscale", "invalid_create_args")


# ---- the manager over fakes ------------------------------------------------------------------


@dataclass
class FakeInstances:
    """Instance records and the CPU seconds their VMMs used, set by the test."""

    records: dict[str, InstanceRecord] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def demand(self, pid: int, vcpus: int) -> float | None:
        """The CPU demand of the VMM `pid` (the test's figure)."""
        found = [r.id for r in self.records.values() if r.pid == pid]
        return self.cpu.get(found[0], 0.0) if found else None

    async def restore(self, ref: str) -> InstanceRecord:
        self.records[ref].state = State.RUNNING
        return self.records[ref]


@dataclass
class FakeGroups:
    """One group; members made, retired and counted in flight as the test says."""

    instances: FakeInstances
    group: ServiceGroupRecord = field(default_factory=lambda: ServiceGroupRecord(
        id="g" * 24, name="web", services=[Service(port=80, destination_port=8080)],
        soft_limit=5, hard_limit=5))  # fmt: skip
    members: list[MemberRecord] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    admit: int = 99  # creates the host still takes
    made: list[CreateInstanceRequest] = field(default_factory=list)
    retired: list[tuple[str, str]] = field(default_factory=list)

    @property
    def repo(self) -> FakeGroups:
        return self

    def get(self, ref: str) -> ServiceGroupRecord:
        if ref not in (self.group.id, self.group.name):
            raise NotFound(f"service group {ref!r} not found")
        return self.group

    def members_of(self, group_id: str) -> list[Member]:
        return [Member(m, self.instances.records[m.id]) for m in self.members]

    async def requests_in_flight(self, members: list[Member]) -> dict[str, int]:
        return {m.record.id: self.in_flight.get(m.record.id, 0) for m in members}

    async def retire(self, instance_id: str, how: str) -> bool:
        if self.in_flight.get(instance_id):
            return False
        self.retired.append((instance_id, how))
        self.instances.records[instance_id].state = (
            State.STANDBY if how == "standby" else State.STOPPED)  # fmt: skip
        return True

    async def create_instance(self, req: CreateInstanceRequest, group: Any, scale: Any) -> Any:
        if self.admit <= 0:
            raise InsufficientResources("vcpus: 1 more do not fit")
        self.admit -= 1
        self.made.append(req)
        return self.add(req.name)

    async def add_instance(
        self, name: str, group: Any, scale: Any, make: Callable[[], Awaitable[InstanceRecord]]
    ) -> InstanceRecord:
        made = await make()
        self.members.append(MemberRecord(id=made.id, name=name, group_id=self.group.id))
        return made

    def add(self, name: str, state: State = State.RUNNING) -> InstanceRecord:
        index = len(self.members)
        record = self.record(name, state)
        joined = utcnow() + timedelta(seconds=index)
        member = MemberRecord(id=record.id, name=name, group_id=self.group.id, joined_at=joined)
        self.members.append(member)
        return record

    def record(self, name: str, state: State = State.RUNNING) -> InstanceRecord:
        index = len(self.instances.records)
        record = InstanceRecord.model_validate({
            "id": f"{index:024d}", "name": name, "image": "web:latest", "state": state,
            "vcpus": 1, "memory_bytes": 1 << 28, "overlay_bytes": 1 << 30, "pid": 1000 + index,
            "image_digest": "sha256:" + "0" * 64,
            "started_at": utcnow() - timedelta(hours=1),
        })  # fmt: skip
        self.instances.records[record.id] = record
        return record


@dataclass
class FakeTemplates:
    """One template, `tpl`; its clones are records of the fake instances."""

    groups: FakeGroups
    template: Any = field(default_factory=lambda: SimpleNamespace(id="t" * 24, name="tpl"))
    cloned: list[tuple[str, str]] = field(default_factory=list)

    def get(self, ref: str) -> Any:
        if ref not in (self.template.id, self.template.name):
            raise NotFound(f"template {ref!r} not found")
        return self.template

    async def clone(self, ref: str, name: str) -> InstanceRecord:
        self.cloned.append((ref, name))
        return self.groups.record(name)


def rig(tmp_path: Path) -> tuple[AutoscaleManager, FakeGroups, FakeInstances]:
    instances = FakeInstances()
    groups = FakeGroups(instances)
    return manager_on(tmp_path, groups, instances), groups, instances


def manager_on(path: Path, groups: FakeGroups, instances: FakeInstances) -> AutoscaleManager:
    store = Store(path / "ember.db")
    templates = FakeTemplates(groups)
    return AutoscaleManager(
        store, cast(Any, groups), cast(Any, instances), cast(Any, templates), instances.demand
    )


async def test_members_are_clones_of_the_configured_template(tmp_path: Path) -> None:
    manager, groups, instances = rig(tmp_path)
    groups.add("web-a")
    with pytest.raises(NotFound, match="template 'gone' not found"):
        manager.configure("web", request(create_args={"template": "gone"}))
    with pytest.raises(InvalidArgument, match="give `template` alone"):
        manager.configure("web", request(create_args={"template": "tpl", "image": "x"}))
    stored = manager.configure("web", request(create_args={"template": "tpl"}))
    assert stored.create_args == {"template": "t" * 24}  # by id: a name can be reused
    await manager.run_pass()
    await burn(manager, instances, 95)
    templates = cast(FakeTemplates, manager.templates)
    assert groups.made == [] and len(templates.cloned) == 1  # a clone, never a cold create
    ref, name = templates.cloned[0]
    assert ref == "t" * 24 and name.startswith("web-")
    assert name in [m.name for m in groups.members]  # it joined the group
    assert manager.decisions("web")[0].instances == [name]


async def burn(manager: AutoscaleManager, instances: FakeInstances, percent: float) -> None:
    """One pass after every member's VMM used `percent` of its vCPU since the last."""
    await asyncio.sleep(0.05)
    for record in instances.records.values():
        instances.cpu[record.id] = instances.cpu.get(record.id, 0.0) + percent / 100 * 0.05
    await manager.run_pass()


async def test_grows_to_max_and_shrinks_to_min_recording_reasons(tmp_path: Path) -> None:
    manager, groups, instances = rig(tmp_path)
    groups.add("web-first")
    manager.configure("web", request())
    await manager.run_pass()  # the first samples: nothing measured yet, nothing decided
    assert manager.decisions("web") == []
    for _ in range(6):
        await burn(manager, instances, 95)
    assert [m.name for m in groups.made][:1] and len(groups.made) == 2  # never past max 3
    assert all(m.name.startswith("web-") and m.image == "web:latest" for m in groups.made)
    for _ in range(6):
        await burn(manager, instances, 2)
    running = [r for r in instances.records.values() if r.state == State.RUNNING]
    assert len(running) == 1  # min_size
    assert [how for _, how in groups.retired] == ["delete", "delete"]
    decisions = manager.decisions("web")[::-1]
    assert [(d.action, d.size_before, d.size_after) for d in decisions] == [
        ("scale_out", 1, 2), ("scale_out", 2, 3), ("scale_in", 3, 2), ("scale_in", 2, 1),
    ]  # fmt: skip
    # the figure is CPU seconds over wall time: about what `burn` spent
    assert re.fullmatch(r"policy 'cpu': cpu \d+\.\d in \[40, inf\) -> change \+1: 1 -> 2",
                        decisions[0].reason)  # fmt: skip
    assert re.fullmatch(r"policy 'cpu': cpu \d\.\d in \[-inf, 15\) -> change -1: 3 -> 2",
                        decisions[2].reason)  # fmt: skip
    # the newest member goes first
    assert decisions[2].instances == [groups.made[-1].name]


async def test_never_retires_a_member_with_requests_in_flight(tmp_path: Path) -> None:
    manager, groups, instances = rig(tmp_path)
    first = groups.add("web-a")
    busy = groups.add("web-b")
    groups.in_flight[busy.id] = 1
    manager.configure("web", request())
    await manager.run_pass()
    await burn(manager, instances, 1)
    assert groups.retired == [(first.id, "delete")]  # the older, idle one
    groups.in_flight[busy.id] = 2
    groups.add("web-c")
    groups.in_flight[groups.members[-1].id] = 1
    await manager.run_pass()
    await burn(manager, instances, 1)
    blocked = manager.decisions("web")[0]
    assert blocked.action == "blocked" and "requests in flight are never retired" in blocked.reason


async def test_admission_stops_the_growth_and_says_why(tmp_path: Path) -> None:
    manager, groups, instances = rig(tmp_path)
    groups.add("web-a")
    groups.admit = 0
    manager.configure("web", request())
    await manager.run_pass()
    await burn(manager, instances, 95)
    await burn(manager, instances, 95)
    decisions = manager.decisions("web")
    assert len(decisions) == 1  # recorded once, not every pass
    assert decisions[0].action == "blocked"
    assert "the host's admission limits: vcpus: 1 more do not fit" in decisions[0].reason
    assert len(instances.records) == 1


async def test_standby_members_come_back_before_new_ones_are_made(tmp_path: Path) -> None:
    manager, groups, instances = rig(tmp_path)
    groups.add("web-a")
    groups.add("web-b", State.STANDBY)
    manager.configure("web", request(scale_in="standby"))
    await manager.run_pass()
    await burn(manager, instances, 95)
    assert groups.made == [] and instances.records[groups.members[1].id].state == State.RUNNING
    assert manager.decisions("web")[0].instances == ["web-b"]


async def test_warmup_keeps_a_booting_member_out_of_the_figure(tmp_path: Path) -> None:
    manager, groups, instances = rig(tmp_path)
    groups.add("web-a").started_at = utcnow()  # just booted: not warm for 60 s
    manager.configure("web", request(warmup_time_ms=60_000))
    await manager.run_pass()
    await burn(manager, instances, 95)
    assert manager.decisions("web") == [] and groups.made == []


async def test_a_restart_goes_on_with_the_stored_state(tmp_path: Path) -> None:
    manager, groups, instances = rig(tmp_path)
    groups.add("web-a")
    manager.configure("web", request(cooldown_time_ms=3_600_000))
    await manager.run_pass()
    await burn(manager, instances, 95)
    assert len(groups.made) == 1
    # A new server on the same data: the configuration, the decisions and the cooldown
    # of the last change are all still there.
    again = manager_on(tmp_path, groups, instances)
    _, stored = again.get("web")
    assert stored.last_scaled_at is not None and stored.max_size == 3
    assert [d.action for d in again.decisions("web")] == ["scale_out"]
    await again.run_pass()
    await burn(again, instances, 95)
    assert len(groups.made) == 1  # still cooling down
    again.start()  # the supervised loop runs its passes on its own
    await asyncio.sleep(0.1)
    await again.close()


async def test_policies_are_added_read_and_deleted(tmp_path: Path) -> None:
    manager = rig(tmp_path)[0]
    manager.configure("web", request(policies=[]))
    added = manager.add_policy("web", AutoscalePolicyRequest.model_validate(CPU_POLICY))
    assert manager.policy("web", "cpu") == added
    with pytest.raises(Conflict):
        manager.add_policy("web", AutoscalePolicyRequest.model_validate(CPU_POLICY))
    manager.delete_policy("web", "cpu")
    with pytest.raises(NotFound) as caught:
        manager.policy("web", "cpu")
    assert caught.value.code == "policy_not_found"
    manager.delete("web")
    with pytest.raises(NotFound) as caught:
        manager.get("web")
    assert caught.value.code == "autoscale_not_configured"


def test_cpu_demand_counts_the_busiest_threads_run_and_wait(tmp_path: Path) -> None:
    for tid, (run, wait) in {"1": (600, 31_000), "2": (13_600, 54_700), "3": (9, 750)}.items():
        (tmp_path / "42" / "task" / tid).mkdir(parents=True)
        stat = f"{run * 1_000_000} {wait * 1_000_000} 7\n"
        (tmp_path / "42" / "task" / tid / "schedstat").write_text(stat)
    # one vCPU: the thread with the most time on a CPU (the vCPU's), its run + wait
    assert vcpu_demand_seconds(42, 1, tmp_path) == pytest.approx(68.3)
    assert vcpu_demand_seconds(42, 2, tmp_path) == pytest.approx(68.3 + 31.6)
    assert vcpu_demand_seconds(43, 1, tmp_path) is None  # gone
    assert (vcpu_demand_seconds(os.getpid(), 1) or 0) > 0  # the real /proc


async def test_a_clone_joins_its_group_by_the_one_membership_path(tmp_path: Path) -> None:
    """The real GroupManager over a stand-in instance manager: a member cloned by
    `make_member` is a member of the group as a created one is."""
    instances = WakeInstances()
    groups, group_id = await grouped(tmp_path, instances, names=())

    async def clone(ref: str, name: str) -> InstanceRecord:
        return instances.add(name, State.RUNNING)

    templates = cast(Any, SimpleNamespace(clone=clone))
    made = await make_member(groups, templates, groups.get(group_id), {"template": "t" * 24})
    assert made.name.startswith("g-")
    assert [m.record.id for m in groups.members_of(group_id)] == [made.id]
    membership = groups.membership(made.id)
    assert membership is not None and membership[0].name == "g"
