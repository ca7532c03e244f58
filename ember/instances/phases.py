"""Boot phases, measured where they happen: where a boot spends its time.

A boot goes through these phases; each ends at the milestone in brackets:

    image     (image ready: the root disk to boot is known)      create only
    disks     (disks ready: resources attached, config disk written)
    vmm       (VMM started: the hypervisor process runs)
    kernel    (the guest kernel handed over to /init)
    agent     (the guest agent answered: init and agent are up)
    workload  (the agent reported the workload started: Running)

The host sees every milestone but one: when the kernel starts /init. That one
is measured in the guest after Running: `/proc/uptime` and PID 1's start time
(`/proc/1/stat`; PID 1 is the agent, which /init became by `switch_root`, so
its start time is when the kernel ran /init) put that moment on the host's
clock to within their 10 ms resolution. Until then, or when the guest cannot
tell (no `cat` in the image, the workload already gone), the time between
VMM started and agent ready is one phase, `guest`.

`current_phase` is the boot phase while the instance is Initializing, else
its state in lower case (`running`, `stopped`, ...); `phase_durations_ms` are
the phases of the last boot, the current one accrued up to the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from ember.errors import EmberError
from ember.guest.client import AgentClient
from ember.instances.core import InstanceCore
from ember.instances.models import BootPhases, InstanceRecord
from ember.instances.state import State

BOOT_PHASES = ("image", "disks", "vmm", "kernel", "agent", "workload")
GUEST_PROBE_TIMEOUT = 5.0


def now() -> datetime:
    return datetime.now(UTC)


def begin(
    core: InstanceCore, instance_id: str, at: datetime, done: tuple[tuple[str, datetime], ...]
) -> None:
    """A boot starts at `at`; `done` are phases already over, each with its end."""
    phases = BootPhases(current="", since=at, boot_started=at)
    for name, end in done:
        phases.durations_ms[name] = _ms(end - phases.since)
        phases.since = end
    phases.current = _after(done[-1][0]) if done else BOOT_PHASES[0]

    def change(record: InstanceRecord) -> None:
        record.phases = phases

    core.update(instance_id, change)


def mark(core: InstanceCore, instance_id: str, phase: str, at: datetime | None = None) -> None:
    """`phase` ended at `at` (default: now); the next one begins."""
    end = at or now()

    def change(record: InstanceRecord) -> None:
        phases = record.phases
        if phases is None:
            return
        phases.durations_ms[phase] = _ms(end - phases.since)
        phases.current, phases.since = _after(phase), end

    core.update(instance_id, change)


def _after(phase: str) -> str:
    if phase in ("kernel", "agent", "guest"):
        return "workload"
    index = BOOT_PHASES.index(phase)
    return BOOT_PHASES[index + 1] if index + 1 < len(BOOT_PHASES) else "running"


def _ms(delta: timedelta) -> int:
    return max(0, round(delta.total_seconds() * 1000))


async def measure_guest(core: InstanceCore, instance_id: str, agent: AgentClient) -> None:
    """Split `guest` into `kernel` and `agent` from the guest's own clocks (see above)."""
    with contextlib.suppress(EmberError, OSError, TimeoutError, ValueError, IndexError):
        before = now()
        session = await agent.exec(["cat", "/proc/uptime", "/proc/1/stat"])
        async with asyncio.timeout(GUEST_PROBE_TIMEOUT):
            result, out, _ = await session.wait()
        after = now()
        if result.exit_code != 0:
            return
        lines = out.decode().splitlines()
        uptime = float(lines[0].split()[0])
        # Fields after the command name (which may hold spaces); starttime is field 22.
        starttime_ticks = int(lines[1].rsplit(")", 1)[1].split()[19])
        read_at = before + (after - before) / 2
        init_started = read_at - timedelta(seconds=uptime - starttime_ticks / 100)
        _split(core, instance_id, init_started)


def _split(core: InstanceCore, instance_id: str, init_started: datetime) -> None:
    def change(record: InstanceRecord) -> None:
        phases = record.phases
        if phases is None or "guest" not in phases.durations_ms or record.started_at is None:
            return
        durations = phases.durations_ms
        guest = durations["guest"]
        # started_at is the VMM-started milestone (boot.py).
        kernel = min(guest, _ms(init_started - record.started_at))
        new = {k: v for k, v in durations.items() if k != "guest"}
        # Keep the order of the phases in the answer.
        ordered: dict[str, int] = {k: new[k] for k in ("image", "disks", "vmm") if k in new}
        ordered |= {"kernel": kernel, "agent": guest - kernel}
        ordered |= {k: v for k, v in new.items() if k not in ordered}
        phases.durations_ms = ordered

    core.update(instance_id, change)


def describe(
    record: InstanceRecord, at: datetime | None = None
) -> tuple[str, datetime, dict[str, int]]:
    """(current_phase, current_phase_since, phase_durations_ms) for the answer."""
    at = at or now()
    phases = record.phases
    durations = dict(phases.durations_ms) if phases else {}
    if record.state == State.INITIALIZING and phases is not None and phases.current:
        durations[phases.current] = durations.get(phases.current, 0) + _ms(at - phases.since)
        return phases.current, phases.since, durations
    since = _state_since(record)
    return str(record.state).lower(), since, durations


def _state_since(record: InstanceRecord) -> datetime:
    if record.state == State.RUNNING:
        if record.phases is not None and record.phases.current == "running":
            return record.phases.since
        return record.started_at or record.created_at
    return record.stopped_since or record.started_at or record.created_at
