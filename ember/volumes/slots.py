"""Volume slots: the fixed set of volume disks a VM boots with, whose backing files
change while it runs (QEMU's microvm has no hotplug bus; see README "Volumes on
running instances").

Every boot plugs `SLOTS` swappable disks `ember-vol-0..N`: the volumes attached at
boot first (mount order, as `plan_disks`), then empty slots backed by an empty file
each. The overlay disks of `overlay` attachments follow, fixed. The table of what
backs each slot is kept in the instance directory, rewritten at each boot and each
change, and read back by a restore, which must recreate the same devices with the
same backing files as the VM it continues.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import TypeAdapter

from ember.errors import Conflict, Unavailable
from ember.hypervisor import DiskSpec
from ember.volumes.models import Attachment
from ember.volumes.mounts import VOLUME_SERIAL, ordered, plan_disks

SLOTS = 8  # = MAX_ATTACHMENTS: every attachment an instance may have fits a slot
TABLE = "volume-slots.json"


@dataclass(frozen=True, slots=True)
class SlotTable:
    """The volume disks of one running VM, in device order, and which volume backs a slot."""

    disks: tuple[DiskSpec, ...]
    holders: dict[str, str]  # serial -> volume id

    def holds_exactly(self, attachments: list[Attachment]) -> bool:
        """Whether the slots hold exactly these attachments' volumes (a table left by a VM
        whose attachments changed since, while it was stopped, is stale)."""
        held = sorted(self.holders.values())
        return held == sorted(a.volume_id for a in attachments)

    def slot_of(self, volume_id: str) -> DiskSpec | None:
        serial = next((s for s, v in self.holders.items() if v == volume_id), None)
        return next((d for d in self.disks if d.serial == serial), None)

    def free_slot(self, *, readonly: bool) -> DiskSpec:
        """The first empty slot that can take the attachment: a read-write one needs a
        device that booted writable (virtio-blk fixes its read-only flag at boot)."""
        for disk in self.disks:
            empty = disk.swappable and disk.serial not in self.holders
            if empty and (readonly or not disk.readonly):
                return disk
        raise Conflict(
            "no free volume slot on the running VM for a "
            + ("read-only" if readonly else "read-write")
            + " volume: stop the instance and attach it then",
            code="no_volume_slot",
        )

    def swapped(self, disk: DiskSpec, volume_id: str | None) -> SlotTable:
        """This table with `disk` in its slot (held by `volume_id`, or empty)."""
        disks = tuple(disk if d.serial == disk.serial else d for d in self.disks)
        holders = {s: v for s, v in self.holders.items() if s != disk.serial}
        if volume_id is not None:
            holders[disk.serial] = volume_id
        return SlotTable(disks, holders)


_ADAPTER = TypeAdapter(SlotTable)


def empty_slot_path(instance_dir: Path, index: int) -> Path:
    return instance_dir / f"volume-slot-{index}.empty"


def layer_path(instance_dir: Path, serial: str) -> Path:
    return instance_dir / f"{serial}.qcow2"


def fresh_table(
    attachments: list[Attachment], instance_dir: Path, volume_disk: dict[str, Path]
) -> SlotTable:
    """The slots of a boot: the attached volumes (and their overlay disks), then empty ones."""
    disks = plan_disks(attachments, instance_dir, volume_disk)
    held = {VOLUME_SERIAL.format(i): a.volume_id for i, a in enumerate(ordered(attachments))}
    empty = [
        DiskSpec(empty_slot_path(instance_dir, i), VOLUME_SERIAL.format(i), swappable=True)
        for i in range(len(held), SLOTS)
    ]
    volumes = [d for d in disks if d.swappable]
    fixed = [d for d in disks if not d.swappable]
    return SlotTable((*volumes, *empty, *fixed), held)


def create_empty_slots(instance_dir: Path) -> None:
    """One empty file per slot (a file node holds a write lock: slots cannot share one)."""
    for index in range(SLOTS):
        empty_slot_path(instance_dir, index).touch()


def emptied(table: SlotTable, serial: str, instance_dir: Path) -> DiskSpec:
    """The slot `serial` backed by its empty file again."""
    disk = next(d for d in table.disks if d.serial == serial)
    index = int(serial.rsplit("-", 1)[1])
    return replace(disk, path=empty_slot_path(instance_dir, index), format="raw")


def holding(slot: DiskSpec, volume_disk: Path, instance_dir: Path, *, readonly: bool) -> DiskSpec:
    """The slot backed by a volume. Read-only: under a throwaway qcow2 layer (the slot's
    node must stay writable for the guest to learn the new size; the volume is the
    layer's read-only backing, so nothing the guest does reaches it)."""
    if not readonly:
        return replace(slot, path=volume_disk, format="raw")
    layer = layer_path(instance_dir, slot.serial)
    layer.unlink(missing_ok=True)
    proc = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(volume_disk), "-F", "raw",
         str(layer)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise Unavailable(f"cannot create the read-only layer of a volume: {proc.stderr.strip()}")
    return replace(slot, path=layer, format="qcow2")


def save_table(instance_dir: Path, table: SlotTable) -> None:
    partial = instance_dir / (TABLE + ".tmp")
    partial.write_bytes(_ADAPTER.dump_json(table))
    partial.replace(instance_dir / TABLE)


def load_table(instance_dir: Path) -> SlotTable | None:
    """The table of the VM that last ran here (None: it booted before slots existed)."""
    try:
        return _ADAPTER.validate_json((instance_dir / TABLE).read_bytes())
    except FileNotFoundError:
        return None
