"""A fake hypervisor and a fake guest agent, for fast in-process tests of the failure paths.

`FakeHypervisor` sits behind the same `Hypervisor` protocol as QEMU. It
records every call, "runs" a VM as an in-memory process with a pid of its
own, writes a small `vmstate` on save (and creates the memory file a VM runs
on), and fails or hangs at a named call: `FakeHypervisor(fail={"save"})`,
`hang={"restore"}`. With `agent=True` each VM it starts or restores gets a
`FakeAgent` on the spec's agent socket, which answers HELLO, PING, STATUS,
SET_TIME, SET_NETWORK, SET_IDENTITY and group SIGNALs (recorded) and refuses
everything else; `agent=False`
leaves the socket absent, as a guest whose agent never comes.

The VM tests stay the end-to-end proof; these fakes cover what real QEMU cannot
be made to do on demand (fail at one exact step).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from ember.errors import Unavailable
from ember.guest.protocol import CONTROL_CHANNEL, Decoder, Frame, MsgType, encode
from ember.hypervisor import Capabilities, DiskSpec, VMHandle, VMSpec
from ember.hypervisor.base import HypervisorName, RunState, SavedState

__all__ = ["FakeAgent", "FakeHypervisor", "FakeVM"]

_PIDS = itertools.count(3_900_000)  # above any real pid_max default: never a real process
VMSTATE = b"fake vmstate\n"


class FakeAgent:
    """A guest agent speaking the wire protocol on a Unix socket."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        decoder = Decoder()
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    for reply in self._answer(frame):
                        writer.write(encode(reply))
                await writer.drain()

    def _answer(self, frame: Frame) -> list[Frame]:
        status = {"state": "running", "pid": 1}
        if frame.type == MsgType.HELLO:
            ack = {"nonce": frame.payload.decode(), "version": 1, "status": status}
            return [Frame(MsgType.HELLO_ACK, CONTROL_CHANNEL, json.dumps(ack).encode())]
        if frame.type == MsgType.PING:
            return [Frame(MsgType.PONG, frame.channel, frame.payload)]
        answered = (MsgType.STATUS, MsgType.SET_TIME, MsgType.SET_NETWORK, MsgType.SET_IDENTITY)
        # A group signal (a template's workload stopped) is taken; a plain one (a graceful
        # stop) is refused, so that a stop goes straight on to the VMM's end.
        group_signal = frame.type == MsgType.SIGNAL and b"group=" in frame.payload
        if frame.type in answered or group_signal:
            fields = dict(kv.split("=", 1) for kv in frame.payload.decode().split("\0") if kv)
            self.requests.append((MsgType(frame.type).name, fields))
            return [Frame(MsgType.STATUS, frame.channel, json.dumps(status).encode())]
        message = {"message": f"the fake agent does not do {frame.type:#x}"}
        return [Frame(MsgType.ERROR, frame.channel, json.dumps(message).encode())]


@dataclass
class FakeVM:
    spec: VMSpec
    handle: VMHandle
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    paused: bool = False
    agent: FakeAgent | None = None
    balloon: int | None = None  # what the balloon leaves the guest; None: all of it


class FakeHypervisor:
    """A `Hypervisor` that runs nothing: see the module docstring."""

    name: HypervisorName = "qemu"  # stands in for the only backend instances ask for
    capabilities = Capabilities(snapshot=True, disk_io_limit=True, hotplug_disk=True, balloon=True)

    def __init__(
        self,
        *,
        fail: set[str] | None = None,
        hang: set[str] | None = None,
        agent: bool = True,
        devices: list[str] | None = None,
    ) -> None:
        self.fail, self.hang = set(fail or ()), set(hang or ())
        self.agent = agent
        self.extra_devices = list(devices or [])  # a device a newer build would add
        self.calls: list[str] = []
        self.vms: dict[int, FakeVM] = {}
        self.disks: list[DiskSpec] = []  # every disk `change_disk` was given, in order

    async def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.hang:
            await asyncio.Event().wait()  # until cancelled
        if name in self.fail:
            raise Unavailable(f"fake {name} failed")

    def running(self) -> list[FakeVM]:
        return [vm for vm in self.vms.values() if not vm.exited.is_set()]

    async def _launch(self, spec: VMSpec) -> VMHandle:
        handle = VMHandle(pid=next(_PIDS), qmp_socket=spec.qmp_socket,
                          agent_socket=spec.agent_socket)  # fmt: skip
        vm = FakeVM(spec, handle)
        if spec.memory_file is not None and not spec.memory_file.exists():
            with open(spec.memory_file, "wb") as ram:
                ram.truncate(spec.memory_bytes)
        spec.pid_file.parent.mkdir(parents=True, exist_ok=True)
        spec.pid_file.write_text(str(handle.pid))
        if self.agent:
            vm.agent = FakeAgent(spec.agent_socket)
            await vm.agent.start()
        self.vms[handle.pid] = vm
        return handle

    async def start(self, spec: VMSpec) -> VMHandle:
        await self._call("start")
        return await self._launch(spec)

    async def restore(self, spec: VMSpec, state_file: Path) -> VMHandle:
        await self._call("restore")
        if state_file.read_bytes()[: len(VMSTATE)] != VMSTATE:
            raise Unavailable(f"no saved state at {state_file}")
        return await self._launch(spec)

    async def save(self, vm: VMHandle, state_file: Path, *, memory_file: bool) -> SavedState:
        self.calls.append("pause")
        self.vms[vm.pid].paused = True
        await self._call("save")
        payload = VMSTATE if memory_file else VMSTATE + bytes(4096)
        state_file.write_bytes(payload)
        return SavedState(state_file, len(payload), 0.0)

    async def pause(self, vm: VMHandle) -> None:
        await self._call("pause")
        self.vms[vm.pid].paused = True

    async def resume(self, vm: VMHandle) -> None:
        await self._call("resume")
        self.vms[vm.pid].paused = False

    async def quit(self, vm: VMHandle) -> None:
        await self._call("quit")
        await self._end(vm)

    def kill(self, vm: VMHandle) -> None:
        self.calls.append("kill")
        found = self.vms.get(vm.pid)
        if found is not None:
            found.exited.set()
            if found.agent is not None:
                found.agent.close()

    async def _end(self, vm: VMHandle) -> None:
        found = self.vms.get(vm.pid)
        if found is not None:
            found.exited.set()
            if found.agent is not None:
                found.agent.close()

    async def run_state(self, vm: VMHandle) -> RunState:
        await self._call("run_state")
        found = self.vms.get(vm.pid)
        if found is None or found.exited.is_set():
            return RunState.FAILED
        return RunState.PAUSED if found.paused else RunState.RUNNING

    def is_alive(self, vm: VMHandle) -> bool:
        found = self.vms.get(vm.pid)
        return found is not None and not found.exited.is_set()

    async def wait_exit(self, vm: VMHandle, timeout: float | None = None) -> bool:
        found = self.vms.get(vm.pid)
        if found is None:
            return True
        try:
            async with asyncio.timeout(timeout):
                await found.exited.wait()
        except TimeoutError:
            return False
        return True

    async def change_disk(self, vm: VMHandle, disk: DiskSpec) -> None:
        await self._call("change_disk")
        self.disks.append(disk)

    async def balloon_target(self, vm: VMHandle, guest_bytes: int) -> None:
        await self._call("balloon_target")
        self.vms[vm.pid].balloon = guest_bytes

    async def balloon_actual(self, vm: VMHandle) -> int:
        await self._call("balloon_actual")
        found = self.vms[vm.pid]
        return found.spec.memory_bytes if found.balloon is None else found.balloon

    def collect_output(self, vmm_output: Path, vmm_log: Path) -> None:
        self.calls.append("collect_output")

    def device_set(self, spec: VMSpec) -> list[str]:
        devices = ["virtio-blk-device"] * len(spec.disks) + ["virtio-net-device"] * len(spec.nics)
        devices += ["virtio-serial-device", *self.extra_devices]
        devices += ["memory-backend-file"] if spec.memory_file is not None else []
        return devices + ([] if spec.free_page_reporting else ["free-page-reporting=off"])
