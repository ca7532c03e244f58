"""Health checks: Ember probes each Running instance that has a `health_check`.

`http` and `tcp` probes go to the instance's network address (the plan refuses
them for an instance without one); `exec` runs the command through the guest
agent. One task per boot (keyed by `started_at`), started and stopped by a loop
that wakes on every state change, so a PATCH, a restart or a server restart
needs nothing special. The status (Hypeman's `InstanceHealthStatus`) lives in
memory: it is about the current boot, and a restarted server starts over at
`starting`.

Failures during `start_period` do not count toward unhealthy. Once
`failure_threshold` consecutive probes failed the workload is `unhealthy`; if
its restart policy would restart it, the boot is marked
(`health_failed_boot`, `last_reason: health_check_failed`) and the VM is
stopped like a stop does, but without the manual-stop block, so the supervisor
restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import httpx

from ember.errors import EmberError
from ember.instances.core import InstanceCore
from ember.instances.models import HealthCheck, InstanceRecord
from ember.instances.state import State
from ember.instances.stop import shutdown
from ember.tasks import PeriodicTask, Tasks
from ember.units import parse_duration

log = logging.getLogger("ember.instances")
HealthState = Literal["disabled", "starting", "healthy", "unhealthy", "unknown"]
MAX_ERROR = 200  # characters of a probe's error kept in the status
Address = Callable[[InstanceRecord], str | None]


@dataclass
class HealthStatus:
    """Hypeman's `InstanceHealthStatus`, served as it is in the instance answer."""

    status: HealthState
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_checked_at: datetime | None = None
    last_error: str | None = None
    last_failure_at: datetime | None = None
    last_success_at: datetime | None = None


@dataclass
class _Probe:
    boot: datetime
    status: HealthStatus = field(default_factory=lambda: HealthStatus(status="starting"))
    task: asyncio.Task[None] | None = None


class HealthMonitor:
    def __init__(self, core: InstanceCore, address: Address) -> None:
        self.core, self._address = core, address
        self._probes: dict[str, _Probe] = {}
        self._loop = PeriodicTask(
            "health sync", self._sync_pass, 5.0, log=log,
            wake=lambda timeout: core.changes.wait_for(self._out_of_sync, timeout),
        )  # fmt: skip
        # Probes (`probe:<id>`) and, apart from them, stops for the restart policy
        # (`stop:<id>`): the sync cancels a probe as soon as the instance leaves Running.
        self._tasks = Tasks()

    def status(self, record: InstanceRecord) -> HealthStatus:
        if record.health_check is None:
            return HealthStatus(status="disabled")
        probe = self._probes.get(record.id)
        if record.state != State.RUNNING:
            return HealthStatus(status="unknown")
        if probe is None or probe.boot != record.started_at:
            return HealthStatus(status="starting")
        return probe.status

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()  # first: a sync pass would start probes again
        await self._tasks.close()
        self._probes.clear()

    # ---- which instances are probed ------------------------------------------------

    async def _sync_pass(self) -> None:
        self.sync()

    def _wanted(self) -> dict[str, datetime]:
        return {
            r.id: r.started_at
            for r in self.core.repo.all()
            if r.state == State.RUNNING and r.health_check is not None and r.started_at
        }

    def _out_of_sync(self) -> bool:
        wanted = self._wanted()
        probes = {k: p.boot for k, p in self._probes.items() if p.task and not p.task.done()}
        return wanted != probes

    def sync(self) -> None:
        """One probe task per Running instance with a health check, for its current boot."""
        wanted = self._wanted()
        for instance_id, probe in list(self._probes.items()):
            if wanted.get(instance_id) != probe.boot or probe.task is None or probe.task.done():
                if probe.task is not None:
                    probe.task.cancel()
                del self._probes[instance_id]
        for instance_id, boot in wanted.items():
            if instance_id not in self._probes:
                probe = _Probe(boot)
                probe.task = self._tasks.spawn(f"probe:{instance_id}",
                                               self._probe_loop(instance_id, probe))  # fmt: skip
                self._probes[instance_id] = probe

    # ---- one boot --------------------------------------------------------------------

    async def _probe_loop(self, instance_id: str, probe: _Probe) -> None:
        running_since = time.monotonic()
        while True:
            record = self.core.repo.get(instance_id)
            if record is None or record.health_check is None:
                return
            check = record.health_check
            await asyncio.sleep(parse_duration(check.interval, field="interval"))
            record = self.core.repo.get(instance_id)
            if record is None or record.state != State.RUNNING or record.started_at != probe.boot:
                return
            if record.health_check is None:
                return
            check = record.health_check  # a PATCH takes effect at the next probe
            error = await self._probe(record, check)
            in_start_period = time.monotonic() - running_since < parse_duration(
                check.start_period, field="start_period"
            )
            if self._count(probe.status, check, error, in_start_period):
                self._unhealthy(record, probe)

    def _count(
        self, status: HealthStatus, check: HealthCheck, error: str | None, grace: bool
    ) -> bool:
        """Record one probe's result; True when the workload just became unhealthy."""
        now = datetime.now(UTC)
        status.last_checked_at = now
        if error is None:
            status.consecutive_successes += 1
            status.consecutive_failures = 0
            status.last_success_at, status.last_error = now, None
            if status.consecutive_successes >= check.success_threshold:
                status.status = "healthy"
            return False
        status.last_failure_at, status.last_error = now, error[:MAX_ERROR]
        status.consecutive_successes = 0
        if grace:
            return False
        status.consecutive_failures += 1
        if status.consecutive_failures >= check.failure_threshold and (
            status.status != "unhealthy"
        ):
            status.status = "unhealthy"
            return True
        return False

    def _unhealthy(self, record: InstanceRecord, probe: _Probe) -> None:
        self.core.event(record.id, f"health: unhealthy ({probe.status.last_error})")
        policy, status = record.restart_policy, record.restart_status
        if policy is None or policy.policy == "never" or status.blocked_reason is not None:
            return  # reported only; probing goes on
        self._tasks.spawn(f"stop:{record.id}", self._stop_for_restart(record, probe))

    async def _stop_for_restart(self, record: InstanceRecord, probe: _Probe) -> None:
        core = self.core
        async with core.lock(record.id):
            current = core.repo.get(record.id)
            if current is None or current.state != State.RUNNING:
                return
            if current.started_at != probe.boot:
                return

            def mark(r: InstanceRecord) -> None:
                r.restart_status.health_failed_boot = probe.boot
                r.restart_status.last_reason = "health_check_failed"

            current = core.update(record.id, mark)
            core.event(record.id, "health: stopping the VM for the restart policy")
            try:
                await shutdown(core, current, graceful=True)
            except Exception:
                log.exception("cannot stop an unhealthy instance", extra={"instance": record.id})

    async def _probe(self, record: InstanceRecord, check: HealthCheck) -> str | None:
        """None when the probe passed, else why not."""
        timeout = parse_duration(check.timeout, field="timeout")
        try:
            async with asyncio.timeout(timeout):
                if check.type == "exec":
                    return await self._exec(record, check)
                address = self._address(record)
                if address is None:
                    return "the instance has no network address"
                if check.type == "tcp" and check.tcp is not None:
                    _, writer = await asyncio.open_connection(address, check.tcp.port)
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    return None
                return await _http(address, check, timeout)
        except TimeoutError:
            return f"timed out after {check.timeout}"
        except (OSError, EmberError, httpx.HTTPError) as exc:
            return str(exc) or type(exc).__name__

    async def _exec(self, record: InstanceRecord, check: HealthCheck) -> str | None:
        agent = self.core.agents.get(record.id)
        if agent is None or check.exec is None:
            return "the guest agent is not connected"
        session = await agent.exec(check.exec.command, cwd=check.exec.working_dir)
        result, _, stderr = await session.wait()
        if result.exit_code == 0:
            return None
        detail = stderr.decode(errors="replace").strip()
        return f"exit code {result.exit_code}" + (f": {detail}" if detail else "")


async def _http(address: str, check: HealthCheck, timeout: float) -> str | None:
    assert check.http is not None
    http = check.http
    url = f"{http.scheme}://{address}:{http.port}{http.path}"
    verify: ssl.SSLContext | bool = False  # the workload's own certificate: not ours to judge
    async with httpx.AsyncClient(timeout=timeout, verify=verify, trust_env=False) as client:
        answer = await client.get(url)
    ok = (
        answer.status_code == http.expected_status
        if http.expected_status is not None
        else 200 <= answer.status_code < 400
    )
    return None if ok else f"HTTP {answer.status_code} from {url}"
