"""The state every instance operation shares, and the few primitives they all use.

Each operation (create, start, stop, delete, the monitor) is a module of
functions over one `InstanceCore`; `InstanceManager` is the public face that
takes the locks and calls them. State changes go through `transition`, which
checks the hop against `state.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from ember.config import Settings
from ember.errors import InvalidState, NotFound, Unavailable
from ember.guest.client import AgentClient
from ember.hypervisor import Hypervisor, Hypervisors
from ember.instances.disks import RootDiskSource
from ember.instances.layout import InstanceLayout, Layout
from ember.instances.logs import LogSource, record_event
from ember.instances.models import InstanceRecord
from ember.instances.plan import HostLimits
from ember.instances.resources import Resources
from ember.instances.state import State, check_transition
from ember.store import Repository
from ember.system import BootArtifacts
from ember.tasks import Tasks

AGENT_CONNECT_TIMEOUT = 30.0


class Changes:
    """Wakes every waiter when some state changed; callable from synchronous code."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Return once `predicate()` holds; TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._event.wait()


@dataclass
class InstanceCore:
    repo: Repository[InstanceRecord]
    settings: Settings
    layout: Layout
    hypervisors: Hypervisors
    images: RootDiskSource
    resources: Resources
    limits: HostLimits
    system: Callable[[], BootArtifacts]
    networking: bool  # this server puts instances on a network
    changes: Changes = field(default_factory=Changes)
    # One monitor task per booted VM (keyed by instance id); it owns the agent connection.
    monitors: Tasks = field(default_factory=Tasks)
    # The monitors' helpers: `agent:<id>` follows the agent, `measure:<id>` the boot.
    helpers: Tasks = field(default_factory=Tasks)
    agents: dict[str, AgentClient] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # Instances whose VMM Ember is bringing down on purpose (no "exited early" message).
    stopping: set[str] = field(default_factory=set)

    def paths(self, instance_id: str) -> InstanceLayout:
        return self.layout.of(instance_id)

    def hypervisor(self, record: InstanceRecord) -> Hypervisor:
        return self.hypervisors.get(record.hypervisor)

    def lock(self, instance_id: str) -> asyncio.Lock:
        return self.locks.setdefault(instance_id, asyncio.Lock())

    def current(self, instance_id: str) -> InstanceRecord:
        record = self.repo.get(instance_id)
        if record is None:
            raise NotFound(f"instance {instance_id!r} not found")
        return record

    def update(self, instance_id: str, change: Callable[[InstanceRecord], None]) -> InstanceRecord:
        record = self.repo.update(instance_id, change)
        self.changes.notify()
        return record

    def transition(
        self, instance_id: str, target: State, note: str = "", **fields: object
    ) -> InstanceRecord:
        """One checked hop of the state machine, with the fields that go with it."""

        def change(record: InstanceRecord) -> None:
            check_transition(record.state, target)
            record.state, record.state_error = target, None
            for key, value in fields.items():
                setattr(record, key, value)

        record = self.update(instance_id, change)
        self.event(instance_id, f"state -> {target}" + (f" ({note})" if note else ""))
        return record

    def event(self, instance_id: str, message: str) -> None:
        record_event(self.paths(instance_id).log(LogSource.HYPEMAN), message)


def invalid(record: InstanceRecord, action: str, why: str) -> InvalidState:
    return InvalidState(f"cannot {action} instance {record.name!r} ({record.state}): {why}")


async def await_agent(
    core: InstanceCore, instance_id: str, timeout: float = AGENT_CONNECT_TIMEOUT
) -> AgentClient:
    """The agent connection once the VM's monitor holds it (after a boot or a restore);
    Unavailable if it does not come in `timeout` s or the monitor ends first. The one
    poll for the agent: exec's `wait_for_agent`, a restore's clock and identity."""

    async def connected() -> AgentClient:
        while (agent := core.agents.get(instance_id)) is None or not agent.connected:
            if instance_id not in core.monitors:
                raise Unavailable("the VM ended before its guest agent came back")
            await asyncio.sleep(0.01)
        return agent

    try:
        async with asyncio.timeout(timeout):
            return await connected()
    except TimeoutError:
        raise Unavailable(f"the guest agent did not come back within {timeout:.0f} s") from None
