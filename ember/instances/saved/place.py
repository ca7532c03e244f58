"""Placing a saved VM: copying its files, sparsely, from one `SavedVMFiles` to another.

Both ends have the same shape (an instance's directory or a snapshot's), so a
snapshot from a Standby instance, a restore-into and a fork are the same copy.
Every file is complete or absent (`copy_sparse` writes `.partial` and renames).
The caller holds the source's lock (`SavedSlot.lock`) for the copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable

from ember.snapshots.files import copy_payload, copy_sparse
from ember.snapshots.layout import SavedVMFiles
from ember.snapshots.models import SavedVM

__all__ = ["copy_disks", "place_saved_vm"]


async def copy_disks(src: SavedVMFiles, dst: SavedVMFiles, volume_disks: Iterable[str]) -> None:
    """The overlay, config and volume-overlay disks (by file name) of `src` into `dst`."""
    await copy_sparse(src.overlay, dst.overlay)
    if src.config.exists():  # an instance that never booted has none yet
        await copy_sparse(src.config, dst.config)
    for name in volume_disks:
        await copy_sparse(src.volume_disk(name), dst.volume_disk(name))


async def place_saved_vm(
    src: SavedVMFiles,
    saved: SavedVM | None,
    volume_disks: Iterable[str],
    dst: SavedVMFiles,
    *,
    share_memory: bool = False,
) -> SavedVM | None:
    """The disks and, with `saved`, the saved VM of `src` into `dst`, the memory raw
    (decompressed if need be); the placed saved VM's record (uncompressed, a copy).

    `share_memory`: when the RAM is a raw file in `src`, it is not copied; the placed
    saved VM maps it copy-on-write (`memory_base`), so `src` must outlive the VM."""
    await copy_disks(src, dst, volume_disks)
    # What an earlier life of `dst` saved is replaced (or, without `saved`, gone).
    shutil.rmtree(dst.saved_dir, ignore_errors=True)
    dst.memory.unlink(missing_ok=True)
    if saved is None:
        return None
    dst.saved_dir.mkdir(parents=True, exist_ok=True)
    if share_memory and saved.memory_in_file and src.memory.exists():
        await copy_sparse(src.vmstate, dst.vmstate)  # device state only (~60 KB)
        shared = {"memory_in_file": False, "memory_base": str(src.memory)}
        return saved.with_compression("none", None).model_copy(update=shared, deep=True)
    raw = src.payload(saved.memory_in_file)
    algorithm = saved.compression.algorithm if saved.compression else None
    if raw != src.vmstate:
        await copy_sparse(src.vmstate, dst.vmstate)
    compressed = src.compressed(raw, algorithm) if algorithm else None
    await copy_payload(raw, compressed, algorithm, dst.payload(saved.memory_in_file))
    return saved.with_compression("none", None).model_copy(deep=True)
