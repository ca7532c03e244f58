"""Volume slots (pure table logic, and the qcow2 layer of a read-only attach)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ember.errors import Conflict
from ember.volumes import Attachment
from ember.volumes.slots import (
    SLOTS,
    emptied,
    fresh_table,
    holding,
    load_table,
    save_table,
)


def attachment(volume: str, path: str, **fields: object) -> Attachment:
    base = {"volume_id": volume, "instance_id": "i", "instance_name": "i", "mount_path": path}
    return Attachment.model_validate(base | fields)


def test_a_boot_fills_slots_in_mount_order_then_empty_ones_then_overlay_disks(
    tmp_path: Path,
) -> None:
    attached = [
        attachment("b", "/data/cache"),
        attachment("a", "/data", readonly=True),
        attachment("c", "/srv", readonly=True, overlay=True, overlay_size_bytes=64 << 20),
    ]
    disks = {v: tmp_path / f"{v}.raw" for v in "abc"}
    table = fresh_table(attached, tmp_path, disks)
    serials = [d.serial for d in table.disks]
    assert serials == [f"ember-vol-{i}" for i in range(SLOTS)] + ["ember-volov-2"]
    assert table.holders == {"ember-vol-0": "a", "ember-vol-1": "b", "ember-vol-2": "c"}
    assert [d.readonly for d in table.disks[:3]] == [True, False, True]
    assert table.disks[3].path == tmp_path / "volume-slot-3.empty"
    assert all(d.swappable for d in table.disks[:SLOTS]) and not table.disks[-1].swappable


def test_free_slots_respect_the_device_mode_and_run_out_clearly(tmp_path: Path) -> None:
    table = fresh_table([attachment("a", "/a", readonly=True)], tmp_path, {"a": tmp_path / "a"})
    assert table.free_slot(readonly=False).serial == "ember-vol-1"
    emptied_ro = table.swapped(emptied(table, "ember-vol-0", tmp_path), None)
    assert emptied_ro.free_slot(readonly=True).serial == "ember-vol-0"  # read-only device
    assert emptied_ro.free_slot(readonly=False).serial == "ember-vol-1"
    full = table
    for index in range(1, SLOTS):
        full = full.swapped(full.free_slot(readonly=False), f"v{index}")
    with pytest.raises(Conflict, match="no free volume slot"):
        full.free_slot(readonly=True)
    assert full.slot_of("v3") is not None and full.slot_of("nope") is None


def test_the_table_survives_a_round_trip_on_disk(tmp_path: Path) -> None:
    assert load_table(tmp_path) is None
    table = fresh_table([attachment("a", "/a")], tmp_path, {"a": tmp_path / "a"})
    save_table(tmp_path, table)
    assert load_table(tmp_path) == table
    assert table.holds_exactly([attachment("a", "/a")])
    assert not table.holds_exactly([]) and not table.holds_exactly([attachment("b", "/a")])


def test_a_read_only_attach_goes_under_a_qcow2_layer(tmp_path: Path) -> None:
    volume = tmp_path / "vol.raw"
    volume.write_bytes(b"\0" * (1 << 20))
    table = fresh_table([], tmp_path, {})
    slot = table.free_slot(readonly=True)
    layer = holding(slot, volume, tmp_path, readonly=True)
    assert layer.format == "qcow2" and layer.path == tmp_path / "ember-vol-0.qcow2"
    info = subprocess.run(["qemu-img", "info", str(layer.path)], capture_output=True, text=True)
    assert f"backing file: {volume}" in info.stdout
    assert holding(slot, volume, tmp_path, readonly=False).path == volume
