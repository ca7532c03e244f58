"""Standby: Running -> pause -> save -> VMM gone -> Standby (`has_snapshot`).

The save writes QEMU's migration stream to the instance's `standby` dir. A VM
booted on a memory file (`layout.memory`, x-ignore-shared) leaves its RAM in
that file and the stream is only device state (~60 KB, ~70 ms here); a VM
without one streams all its RAM. Everything the restore needs (memory mode,
kernel, initrd, command line) is decided now and kept in the record, so the
restore only starts the VMM. Compression of the memory payload runs later in
the background (`compress_standby`) and a restore cancels it.

Failure: a save that fails resumes the VM and removes what it wrote; the
instance stays Running with the error in the log and the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading

from ember.errors import EmberError, InvalidArgument, InvalidState, Unavailable
from ember.instances import stopreason
from ember.instances.core import InstanceCore, invalid
from ember.instances.models import InstanceRecord, StandbySnapshot
from ember.instances.monitor import await_monitor
from ember.instances.state import State
from ember.instances.stopreason import StopOrigin
from ember.snapshots.compression import (
    BackgroundJobs,
    Compression,
    CompressionConfig,
    CompressionState,
    allocated_bytes,
    compress_recorded,
    parse_default,
)
from ember.units import format_size, parse_duration

log = logging.getLogger("ember.instances")


def choose_compression(
    core: InstanceCore,
    record: InstanceRecord,
    requested: CompressionConfig | None,
    delay: str | None,
) -> tuple[Compression | None, float]:
    """Request > the instance's `snapshot_policy` > the server default, for both the
    compression and its delay; InvalidArgument naming the field."""
    policy = record.snapshot_policy
    if requested is not None:
        compression = requested.resolve("compression")
    elif policy is not None and policy.compression is not None:
        compression = policy.compression.resolve("snapshot_policy.compression")
    else:
        compression = parse_default(core.settings.snapshot_compression)
    if delay is not None:
        seconds = parse_duration(delay, field="compression_delay")
    elif policy is not None and policy.standby_compression_delay:
        field = "snapshot_policy.standby_compression_delay"
        seconds = parse_duration(policy.standby_compression_delay, field=field)
    else:
        seconds = core.settings.snapshot_compression_delay_seconds
    if seconds < 0:
        raise InvalidArgument("compression_delay: must not be negative")
    return compression, seconds


STANDBY_MESSAGE: dict[StopOrigin, str] = {
    "user": "put in standby by the user",
    "platform": "scaled to zero by the platform (standby, memory kept)",
}


async def standby(
    core: InstanceCore,
    jobs: BackgroundJobs,
    instance_id: str,
    *,
    compression: CompressionConfig | None = None,
    compression_delay: str | None = None,
    origin: StopOrigin = "user",
) -> InstanceRecord:
    """Save the VM and answer as soon as the saved state is on disk and recorded.

    What is left (the VMM quitting, the monitor letting go of the boot, compression)
    runs after the answer, holding the instance's lock, so a restore or delete waits
    for it: it is ~10 ms a caller need not wait for (the ratio to bare QEMU's save).
    """
    lock = core.lock(instance_id)
    await lock.acquire()
    try:
        record = core.current(instance_id)
        if record.state not in (State.RUNNING, State.PAUSED):
            raise invalid(record, "put in standby", "only a Running or Paused instance can")
        hypervisor = core.hypervisor(record)
        if not hypervisor.capabilities.snapshot:
            raise InvalidState(f"the {hypervisor.name} hypervisor cannot save a VM's memory")
        if record.pid is None:
            raise invalid(record, "put in standby", "its VMM is not known")
        chosen, delay = choose_compression(core, record, compression, compression_delay)
        snapshot = await _save(core, record)
        reason = stopreason.standby(origin)
        record = core.transition(
            instance_id, State.STANDBY, _describe(snapshot), standby=snapshot,
            stop_reason=int(reason), exit_message=STANDBY_MESSAGE[origin],
        )  # fmt: skip
    except BaseException:
        lock.release()
        raise
    handle = core.paths(instance_id).handle(record.pid or 0)

    async def let_the_vmm_go(_: object) -> None:
        try:
            # The VMM has nothing left to do; the monitor sees Standby and keeps it.
            await hypervisor.quit(handle)
            await await_monitor(core, instance_id)
            if chosen is not None:
                start_compression(core, jobs, instance_id, chosen, delay)
        finally:
            lock.release()

    jobs.start(f"{instance_id}/vmm-exit", let_the_vmm_go)
    return record


async def _save(core: InstanceCore, record: InstanceRecord) -> StandbySnapshot:
    """Pause and save the VM; on any failure resume it and remove what was written."""
    paths = core.paths(record.id)
    hypervisor = core.hypervisor(record)
    handle = paths.handle(record.pid or 0)
    system = core.system()
    # Only a VM booted on the memory file has it (a stop removes it).
    memory_in_file = paths.memory.exists()
    shutil.rmtree(paths.standby, ignore_errors=True)
    paths.standby.mkdir(parents=True)
    core.event(record.id, "standby: pausing and saving the VM")
    try:
        saved = await hypervisor.save(handle, paths.standby_state, memory_file=memory_in_file)
    except BaseException as exc:
        shutil.rmtree(paths.standby, ignore_errors=True)
        if record.state == State.RUNNING:
            with contextlib.suppress(EmberError, OSError):
                await hypervisor.resume(handle)
        core.event(record.id, f"standby failed, VM resumed: {exc}")
        if isinstance(exc, EmberError):
            raise Unavailable(f"standby failed, the VM runs on: {exc.message}") from exc
        raise
    payload = paths.standby_payload(memory_in_file)
    return StandbySnapshot(
        memory_in_file=memory_in_file,
        state_bytes=saved.bytes,
        memory_bytes=allocated_bytes(payload),
        kernel=str(system.kernel),
        initrd=str(system.initrd),
        cmdline=system.cmdline,
    )


def _describe(snapshot: StandbySnapshot) -> str:
    where = "RAM kept in its file" if snapshot.memory_in_file else "RAM streamed"
    return (
        f"saved {format_size(snapshot.state_bytes)} of VM state, {where} "
        f"({format_size(snapshot.memory_bytes)} of memory)"
    )


# ---- background compression --------------------------------------------------------------


def start_compression(
    core: InstanceCore,
    jobs: BackgroundJobs,
    instance_id: str,
    compression: Compression,
    delay: float,
) -> None:
    async def job(cancel: threading.Event) -> None:
        if delay:
            await asyncio.sleep(delay)
        await compress_standby(core, instance_id, compression, cancel)

    jobs.start(instance_id, job)


async def compress_standby(
    core: InstanceCore, instance_id: str, compression: Compression, cancel: threading.Event
) -> None:
    """Compress the standby's memory payload, then drop the raw one. The compressed file
    is complete (renamed into place, fsynced) before the record says so and before the raw
    payload goes, so a server killed at any point leaves a usable snapshot."""
    record = core.current(instance_id)
    snapshot = record.standby
    if record.state != State.STANDBY or snapshot is None:
        return
    paths = core.paths(instance_id)
    raw = paths.standby_payload(snapshot.memory_in_file)
    target = paths.compressed(raw, compression.algorithm)

    def note(
        state: CompressionState, config: CompressionConfig | None, size: int | None,
        error: str | None,
    ) -> None:  # fmt: skip
        _set_compression(core, instance_id, state, config, compressed=size, error=error)

    core.event(instance_id, f"compressing the standby memory ({compression.algorithm})")
    what = f"standby of instance {instance_id}"
    size = await compress_recorded(raw, target, compression, cancel, note, what)
    if size is None:
        return
    note("compressed", compression.config, size, None)
    raw.unlink(missing_ok=True)
    core.event(instance_id, f"standby memory compressed to {format_size(size)}")


def _set_compression(
    core: InstanceCore,
    instance_id: str,
    state: CompressionState,
    config: CompressionConfig | None,
    *,
    compressed: int | None = None,
    error: str | None = None,
) -> None:
    def change(record: InstanceRecord) -> None:
        if record.standby is not None:
            record.standby = record.standby.with_compression(
                state, config, size=compressed, error=error
            )

    core.update(instance_id, change)


def recover(core: InstanceCore, record: InstanceRecord) -> None:
    """At server start: a compression the last server did not finish is dropped (its
    partial file removed; the raw payload is still there); one that finished but whose
    raw payload was not removed yet loses the raw payload now."""
    snapshot = record.standby
    if record.state != State.STANDBY or snapshot is None:
        return
    paths = core.paths(record.id)
    for partial in paths.standby.glob("*.partial"):
        partial.unlink(missing_ok=True)
    raw = paths.standby_payload(snapshot.memory_in_file)
    if snapshot.compression_state == "compressing":
        _set_compression(core, record.id, "none", None)
        core.event(record.id, "standby compression cut short by a server restart; raw kept")
    elif snapshot.compression_state == "compressed" and snapshot.compression is not None:
        algorithm = snapshot.compression.algorithm or "zstd"
        if paths.compressed(raw, algorithm).exists():
            raw.unlink(missing_ok=True)
