"""Compressing a saved VM's memory payload in the background, and making it raw again.

Written once for every saved VM, an instance's standby or a named snapshot's: a
`SavedSlot` says where the files are, how the record is read and changed, and
which lock guards the files. The compressed file is complete (fsynced, renamed
into place) before the record says `compressed`, and the raw payload goes only
after that, under the slot's lock (a copy reading the files holds it too): so a
server killed at any point leaves a usable saved VM, which `recover_saved`
tidies at the next start.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ember.errors import Unavailable
from ember.snapshots.compression import (
    Compression,
    CompressionConfig,
    CompressionState,
    compress_recorded,
    decompress_file,
)
from ember.snapshots.layout import SavedVMFiles
from ember.snapshots.models import SavedVM
from ember.tasks import BackgroundJobs
from ember.units import format_size

__all__ = ["SavedSlot", "ensure_raw_memory", "recover_saved", "start_compression"]


@dataclass(frozen=True, slots=True)
class SavedSlot:
    """One saved VM wherever it is kept."""

    key: str  # the BackgroundJobs key of its compression: `saved:<id>`, `snapshot:<id>`
    files: SavedVMFiles
    lock: asyncio.Lock  # held by whoever reads the files, and by the raw payload's removal
    read: Callable[[], SavedVM | None]
    change: Callable[[Callable[[SavedVM], SavedVM]], None]
    event: Callable[[str], None]

    def record(
        self, state: CompressionState, config: CompressionConfig | None, size: int | None,
        error: str | None,
    ) -> None:  # fmt: skip
        self.change(lambda s: s.with_compression(state, config, size=size, error=error))


def start_compression(
    jobs: BackgroundJobs, slot: SavedSlot, compression: Compression, delay: float = 0.0
) -> None:
    async def job(cancel: threading.Event) -> None:
        if delay:
            await asyncio.sleep(delay)
        await _compress(slot, compression, cancel)

    jobs.start(slot.key, job)


async def _compress(slot: SavedSlot, compression: Compression, cancel: threading.Event) -> None:
    saved = slot.read()
    if saved is None:
        return
    raw = slot.files.payload(saved.memory_in_file)
    target = slot.files.compressed(raw, compression.algorithm)
    slot.event(f"compressing the saved memory ({compression.algorithm})")
    size = await compress_recorded(raw, target, compression, cancel, slot.record, slot.key)
    if size is None:
        return
    try:
        async with slot.lock:  # nobody is copying the raw payload now
            slot.record("compressed", compression.config, size, None)
            raw.unlink(missing_ok=True)
            slot.change(lambda s: s)  # sizes kept beside the record see the raw payload gone
    except asyncio.CancelledError:  # a restore holding the lock stopped us: raw stays
        target.unlink(missing_ok=True)
        slot.record("none", None, None, None)
        raise
    slot.event(f"saved memory compressed to {format_size(size)}")


async def ensure_raw_memory(jobs: BackgroundJobs, slot: SavedSlot) -> SavedVM:
    """Stop a compression still running (the raw payload is still there then) and
    decompress a payload that only exists compressed; the saved VM, uncompressed."""
    await jobs.cancel(slot.key)
    saved = slot.read()
    if saved is None:
        raise Unavailable("there is no saved VM to restore")
    raw = slot.files.payload(saved.memory_in_file)
    algorithm = saved.compression.algorithm if saved.compression else None
    if not raw.exists():
        compressed = slot.files.compressed(raw, algorithm) if algorithm else None
        if algorithm is None or compressed is None or not compressed.exists():
            also = f" nor {compressed.name}" if compressed is not None else ""
            raise Unavailable(f"the saved memory is missing: no {raw}{also}")
        slot.event(f"decompressing {compressed.name}")
        await asyncio.to_thread(decompress_file, compressed, raw, algorithm)
    return saved


def recover_saved(slot: SavedSlot) -> None:
    """At server start: a compression cut short loses its partial file and is recorded
    `none` (the raw payload is still there); one that finished but did not remove the raw
    payload yet removes it now."""
    saved = slot.read()
    if saved is None:
        return
    for partial in slot.files.saved_dir.glob("*.partial"):
        partial.unlink(missing_ok=True)
    raw = slot.files.payload(saved.memory_in_file)
    if saved.compression_state == "compressing":
        slot.record("none", None, None, None)
        slot.event("compression cut short by a server restart; raw memory kept")
        return
    algorithm = saved.compression.algorithm if saved.compression else None
    finished = saved.compression_state == "compressed" and algorithm is not None
    if finished and slot.files.compressed(raw, algorithm or "zstd").exists():
        raw.unlink(missing_ok=True)
