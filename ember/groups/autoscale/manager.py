"""`AutoscaleManager`: the autoscale configurations of service groups and the loop
that keeps each group at the size its policies ask for.

One supervised loop (`PeriodicTask`, every `PASS_SECONDS`) measures each configured
group, decides (`policy.decide`, pure) and acts: scale out wakes the group's standby
members first, then makes new ones (`members.make_member`, the one factory); scale in
retires the newest members with nothing in flight (`GroupManager.retire`: out of the
routes, checked again, then standby or delete). Everything the loop needs to go on
after a restart is stored: the configuration and the time of the last change (the
cooldown). The samples behind the CPU figure are not: the first pass after a restart
takes them, the second can decide.

A `/v1` surface maps onto the methods here: `configure` (create), `get`, `delete`,
`add_policy`, `policy`, `delete_policy`, `decisions`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from ember.errors import Conflict, EmberError, InsufficientResources, NotFound
from ember.groups.autoscale import policy as policies
from ember.groups.autoscale.cpu import vcpu_demand_seconds
from ember.groups.autoscale.members import TEMPLATE, make_member
from ember.groups.autoscale.models import (
    AutoscalePolicy,
    AutoscaleRecord,
    Decision,
    Metric,
)
from ember.groups.autoscale.requests import (
    AutoscaleConfigRequest,
    AutoscalePolicyRequest,
    config_record,
    policy,
)
from ember.groups.manager import GroupManager, Member
from ember.groups.models import ServiceGroupRecord
from ember.images.models import utcnow
from ember.instances import InstanceManager, State
from ember.store import Repository, Store
from ember.tasks import PeriodicTask
from ember.templates import Templates

log = logging.getLogger("ember.groups.autoscale")
# (pid, vcpus) -> seconds the VMM's vCPUs ran or waited to run so far; None: gone.
CpuDemand = Callable[[int, int], float | None]
PASS_SECONDS = 1.0
KEEP_DECISIONS = 200  # per group, newest
SERVING = (State.RUNNING, State.INITIALIZING)
BLOCKED_RETRY_SECONDS = 10.0  # a create that failed is not retried every pass


class AutoscaleManager:
    def __init__(
        self,
        store: Store,
        groups: GroupManager,
        instances: InstanceManager,
        templates: Templates,
        demand: CpuDemand = vcpu_demand_seconds,
    ) -> None:
        self.store, self.groups, self.instances = store, groups, instances
        self.templates = templates
        self._demand = demand
        self.repo = Repository(store, "autoscale_configs", AutoscaleRecord, "autoscale")
        self._samples: dict[str, tuple[int | None, float, float]] = {}  # pid, demand s, at
        self._blocked: dict[str, str] = {}  # the last blocked reason recorded per group
        self._retry_at: dict[str, float] = {}  # a blocked group is not tried again before
        self._loop = PeriodicTask("autoscale pass", self.run_pass, PASS_SECONDS, log=log)

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()

    # ---- configuration ---------------------------------------------------------------

    def get(self, group_ref: str) -> tuple[ServiceGroupRecord, AutoscaleRecord]:
        group = self.groups.get(group_ref)
        record = self.repo.get(group.id)
        if record is None:
            raise NotFound(
                f"service group {group.name!r} has no autoscale configuration",
                code="autoscale_not_configured",
            )
        return group, record

    def configure(self, group_ref: str, request: AutoscaleConfigRequest) -> AutoscaleRecord:
        """Create or replace a group's configuration (the cooldown of its last change
        carries over)."""
        group = self.groups.get(group_ref)
        current = self.repo.get(group.id)
        record = config_record(group.id, request, current)
        template = record.create_args.get(TEMPLATE)
        if template is not None:  # it must exist now; stored by id (a name can be reused)
            record.create_args = {TEMPLATE: self.templates.get(template).id}
        if current is None:
            self.repo.insert(record)
        else:
            self.repo.save(record)
        return record

    def delete(self, group_ref: str) -> None:
        group, _ = self.get(group_ref)
        self._forget(group.id)

    def add_policy(self, group_ref: str, request: AutoscalePolicyRequest) -> AutoscalePolicy:
        group, record = self.get(group_ref)
        added = policy(request)
        if any(p.name == added.name for p in record.policies):
            raise Conflict(
                f"policy {added.name!r} exists already; delete it first", code="already_exists"
            )
        self.repo.update(group.id, lambda r: r.policies.append(added))
        return added

    def policy(self, group_ref: str, name: str) -> AutoscalePolicy:
        _, record = self.get(group_ref)
        found = next((p for p in record.policies if p.name == name), None)
        if found is None:
            raise NotFound(f"autoscale policy {name!r} not found", code="policy_not_found")
        return found

    def delete_policy(self, group_ref: str, name: str) -> None:
        group, _ = self.get(group_ref)
        self.policy(group_ref, name)
        self.repo.update(
            group.id, lambda r: setattr(r, "policies", [p for p in r.policies if p.name != name])
        )

    def decisions(self, group_ref: str, limit: int = 50) -> list[Decision]:
        """The newest first."""
        group, _ = self.get(group_ref)
        rows = self.store.query(
            "SELECT data FROM autoscale_decisions WHERE group_id = ? ORDER BY seq DESC LIMIT ?",
            (group.id, limit),
        )
        return [Decision.model_validate_json(row["data"]) for row in rows]

    # ---- the loop --------------------------------------------------------------------

    async def run_pass(self) -> None:
        for record in self.repo.all():
            group = self.groups.repo.get(record.id)
            if group is None:  # deleted with its group
                self._forget(record.id)
                continue
            try:
                await self.scale(group, record)
            except EmberError as exc:
                log.warning("autoscale of %s: %s", group.name, exc.message)

    async def scale(self, group: ServiceGroupRecord, record: AutoscaleRecord) -> None:
        """One decision for one group, and its effect."""
        members = self.groups.members_of(group.id)
        serving = [m for m in members if m.instance.state in SERVING]
        values = await self.measure(record, serving)
        proposal = policies.decide(record, len(serving), values, utcnow())
        if proposal is None or time.monotonic() < self._retry_at.get(group.id, 0.0):
            return
        if proposal.target > len(serving):
            await self._scale_out(group, record, members, proposal)
        else:
            await self._scale_in(group, record, serving, proposal)

    async def measure(self, record: AutoscaleRecord, serving: list[Member]) -> dict[Metric, float]:
        """The policies' metrics over the warm members (Running for warmup_time_ms): a
        booting member's CPU would ask for more members it is about to provide."""
        warm = [m for m in serving if _warm(m, record.warmup_time_ms)]
        metrics = {p.metric for p in record.policies if p.enabled}
        values: dict[Metric, float] = {}
        if "cpu" in metrics:
            cpu = [u for m in warm if (u := self._cpu(m)) is not None]
            if cpu:
                values["cpu"] = sum(cpu) / len(cpu)
        if "inflight" in metrics and warm:
            counts = await self.groups.requests_in_flight(warm)
            values["inflight"] = sum(counts.values()) / len(warm)
        return values

    def _cpu(self, member: Member) -> float | None:
        """Percent of the time since the last pass the member's vCPUs ran or waited for
        a host core (`cpu.py`); None: no earlier sample of this same VMM yet."""
        instance = member.instance
        vcpus = max(instance.vcpus, 1)
        seconds = self._demand(instance.pid, vcpus) if instance.pid is not None else None
        now = time.monotonic()
        before = self._samples.pop(instance.id, None)
        if seconds is None:
            return None
        self._samples[instance.id] = (instance.pid, seconds, now)
        if before is None or before[0] != instance.pid or now <= before[2]:
            return None
        busy = (seconds - before[1]) / (now - before[2]) / vcpus
        return min(100.0, max(0.0, 100 * busy))

    async def _scale_out(
        self,
        group: ServiceGroupRecord,
        record: AutoscaleRecord,
        members: list[Member],
        proposal: policies.Proposal,
    ) -> None:
        size = sum(m.instance.state in SERVING for m in members)
        made: list[str] = []
        blocked = None
        asleep = [m for m in members if m.instance.state == State.STANDBY]
        while size + len(made) < proposal.target and blocked is None:
            try:
                if asleep:  # a retired member comes back faster than a new one boots
                    member = asleep.pop()
                    made.append((await self.instances.restore(member.record.id)).name)
                else:
                    member_record = await make_member(
                        self.groups, self.templates, group, record.create_args
                    )
                    made.append(member_record.name)
            except InsufficientResources as exc:
                blocked = f"the host's admission limits: {exc.message}"
            except EmberError as exc:
                blocked = f"a new member failed: {exc.message}"
        self._settle(group, record, proposal, size, size + len(made), made, blocked)

    async def _scale_in(
        self,
        group: ServiceGroupRecord,
        record: AutoscaleRecord,
        serving: list[Member],
        proposal: policies.Proposal,
    ) -> None:
        size = len(serving)
        busy = await self.groups.requests_in_flight(serving)
        idle = [m for m in serving if not busy.get(m.record.id)]
        idle.sort(key=lambda m: m.record.joined_at, reverse=True)  # the newest go first
        retired: list[str] = []
        for member in idle[: size - proposal.target]:
            if await self.groups.retire(member.record.id, record.scale_in):
                retired.append(member.instance.name)
                self._samples.pop(member.record.id, None)
        blocked = None
        if size - len(retired) > proposal.target:
            blocked = "members with requests in flight are never retired"
        self._settle(group, record, proposal, size, size - len(retired), retired, blocked)

    def _settle(
        self,
        group: ServiceGroupRecord,
        record: AutoscaleRecord,
        proposal: policies.Proposal,
        size: int,
        after: int,
        changed: list[str],
        blocked: str | None,
    ) -> None:
        """Record what happened: each change of size, and a block once per reason."""
        if blocked is not None:
            self._retry_at[group.id] = time.monotonic() + BLOCKED_RETRY_SECONDS
        if changed:
            action = "scale_out" if after > size else "scale_in"
            self._record(group, Decision(
                action=action, policy=proposal.policy, metric=proposal.metric,
                value=proposal.value, size_before=size, size_after=after,
                reason=proposal.reason + (f"; stopped at {after}: {blocked}" if blocked else ""),
                instances=changed,
            ))  # fmt: skip
            self.repo.update(record.id, lambda r: setattr(r, "last_scaled_at", utcnow()))
            self._blocked.pop(group.id, None)
        elif blocked is not None and self._blocked.get(group.id) != blocked:
            self._record(group, Decision(
                action="blocked", policy=proposal.policy, metric=proposal.metric,
                value=proposal.value, size_before=size, size_after=size,
                reason=f"{proposal.reason}; not done: {blocked}",
            ))  # fmt: skip
            self._blocked[group.id] = blocked

    def _record(self, group: ServiceGroupRecord, decision: Decision) -> None:
        log.info("autoscale %s: %s (%s)", group.name, decision.action, decision.reason)
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO autoscale_decisions (group_id, data) VALUES (?, ?)",
                (group.id, decision.model_dump_json()),
            )
            conn.execute(
                "DELETE FROM autoscale_decisions WHERE group_id = ? AND seq NOT IN (SELECT seq"
                " FROM autoscale_decisions WHERE group_id = ? ORDER BY seq DESC LIMIT ?)",
                (group.id, group.id, KEEP_DECISIONS),
            )

    def _forget(self, group_id: str) -> None:
        self.repo.delete(group_id)
        self._blocked.pop(group_id, None)
        self._retry_at.pop(group_id, None)
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM autoscale_decisions WHERE group_id = ?", (group_id,))


def _warm(member: Member, warmup_ms: int) -> bool:
    instance = member.instance
    started = instance.started_at
    return (
        instance.state == State.RUNNING
        and started is not None
        and utcnow() - started >= timedelta(milliseconds=warmup_ms)
    )


__all__ = ["PASS_SECONDS", "AutoscaleManager"]
