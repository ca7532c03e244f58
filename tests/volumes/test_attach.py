"""Attachment rules, persistence across a restart, and what an instance boots with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.errors import EmberError
from ember.guest.config import GuestConfig
from ember.store import Store
from ember.volumes import VolumeManager, VolumeStatus
from ember.volumes.models import VolumeRecord


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "ember.db")
    yield store
    store.close()


@pytest.fixture
async def manager(store: Store, tmp_path: Path) -> VolumeManager:
    manager = VolumeManager(store, tmp_path)
    for name in ("data", "shared"):
        await manager.create(name, 1)
    return manager


def refused(call: object, status: int, code: str, text: str) -> None:
    assert callable(call)
    with pytest.raises(EmberError) as err:
        call()
    assert (err.value.status, err.value.code) == (status, code), err.value.message
    assert text in err.value.message


def test_empty_volume_is_a_sparse_ext4_disk(manager: VolumeManager) -> None:
    volume = manager.get("data")
    disk = manager.disk_path(volume.id)
    assert volume.status == VolumeStatus.READY and manager.get(volume.id) == volume
    assert disk.stat().st_size == 1 << 30
    assert disk.stat().st_blocks * 512 < 64 << 20  # sparse: metadata only
    assert disk.read_bytes()[1024 + 56 : 1024 + 58] == b"\x53\xef"  # ext4 superblock magic


async def test_create_validation(manager: VolumeManager) -> None:
    cases: list[tuple[str, int, str | None, dict[str, str] | None, str]] = [
        ("Bad_Name", 1, None, None, "name:"),
        ("ok", 0, None, None, "size_gb"),
        ("ok", 1, "../x", None, "id:"),
        ("ok", 1, None, {"bad key!": "v"}, "tags"),
    ]
    for name, size_gb, volume_id, tags, text in cases:
        with pytest.raises(EmberError) as err:
            await manager.create(name, size_gb, id=volume_id, tags=tags)
        assert err.value.status == 400 and text in err.value.message
    with pytest.raises(EmberError) as err:
        await manager.create("data", 1)
    assert (err.value.status, err.value.code) == (409, "already_exists")
    custom = await manager.create("custom", 1, id="vol-data-1", tags={"team": "a"})
    assert custom.id == "vol-data-1" and manager.find({"team": "a"}) == [custom]
    with pytest.raises(EmberError) as err:
        await manager.create("other", 1, id="vol-data-1")
    assert err.value.status == 409


def test_read_write_belongs_to_one_instance(manager: VolumeManager) -> None:
    manager.attach("data", "i1", "one", "/data")
    refused(lambda: manager.attach("data", "i2", "two", "/data"), 409, "volume_in_use", "'one'")
    refused(
        lambda: manager.attach("data", "i2", "two", "/data", readonly=True),
        409, "volume_in_use", "read-write",
    )  # fmt: skip
    refused(lambda: manager.attach("data", "i1", "one", "/x"), 409, "already_attached", "data")
    refused(lambda: manager.delete("data"), 409, "volume_in_use", "one")
    manager.detach("data", "i1")
    manager.attach("data", "i2", "two", "/data")
    assert [a.instance_id for a in manager.attachments_of_volume(manager.get("data").id)] == ["i2"]


def test_read_only_is_shared(manager: VolumeManager) -> None:
    manager.attach("shared", "i1", "one", "/srv", readonly=True)
    manager.attach("shared", "i2", "two", "/srv", readonly=True)
    manager.attach("shared", "i3", "three", "/srv", readonly=True, overlay=True, overlay_size="1GB")
    refused(lambda: manager.attach("shared", "i4", "four", "/srv"), 409, "volume_in_use", "one")
    assert len(manager.attachments_of_volume(manager.get("shared").id)) == 3


def test_overlay_rules(manager: VolumeManager) -> None:
    refused(
        lambda: manager.attach("shared", "i", "n", "/s", overlay=True, overlay_size="1GB"),
        400, "bad_request", "requires readonly",
    )  # fmt: skip
    refused(
        lambda: manager.attach("shared", "i", "n", "/s", readonly=True, overlay=True),
        400, "bad_request", "overlay_size: required",
    )  # fmt: skip
    refused(
        lambda: manager.attach(
            "shared", "i", "n", "/s", readonly=True, overlay=True, overlay_size="1MB"
        ),
        400, "bad_request", "overlay_size: at least",
    )  # fmt: skip
    assert manager.attachments_of("i") == []


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("data", "absolute"),
        ("/", "root"),
        ("/proc", "/proc"),
        ("/sys/fs", "/sys"),
        ("/dev/shm", "/dev"),
        ("/.ember", "/.ember"),
        ("/a/../b", "'..'"),
        ("/a//b", "normalised"),
        ("/a/", "normalised"),
        ("/a/./b", "normalised"),
        ("/a\nb", "control"),
    ],
)
def test_mount_paths(manager: VolumeManager, path: str, text: str) -> None:
    refused(lambda: manager.attach("data", "i", "n", path), 400, "bad_request", text)


def test_one_path_per_instance(manager: VolumeManager) -> None:
    manager.attach("data", "i", "n", "/data")
    refused(lambda: manager.attach("shared", "i", "n", "/data", readonly=True), 400,
            "bad_request", "already used")  # fmt: skip


def test_unknown_volume_and_detach(manager: VolumeManager) -> None:
    refused(lambda: manager.attach("nope", "i", "n", "/x"), 404, "not_found", "nope")
    refused(lambda: manager.detach("data", "i"), 404, "not_found", "not attached")


async def test_plan_and_guest_config(manager: VolumeManager, tmp_path: Path) -> None:
    manager.attach("shared", "i", "n", "/srv/cache", readonly=True, overlay=True,
                   overlay_size="128MB")  # fmt: skip
    manager.attach("data", "i", "n", "/srv")
    attachments = manager.attachments_of("i")
    disks = manager.plan_disks(attachments, tmp_path / "inst")
    data, shared = manager.get("data").id, manager.get("shared").id
    assert [(d.path, d.serial, d.readonly) for d in disks] == [
        (manager.disk_path(data), "ember-vol-0", False),  # the parent is mounted first
        (manager.disk_path(shared), "ember-vol-1", True),
        (tmp_path / "inst" / f"volume-overlay-{shared}.ext4", "ember-volov-1", False),
    ]
    mounts = manager.guest_mounts(attachments)
    record = GuestConfig(cmd=["x"], volumes=mounts).to_record()
    assert b"vol=ember-vol-0 rw - /srv\0" in record
    assert b"vol=ember-vol-1 ov ember-volov-1 /srv/cache\0" in record
    (tmp_path / "inst").mkdir()
    manager.prepare_overlay_disks(attachments, tmp_path / "inst")
    overlay = tmp_path / "inst" / f"volume-overlay-{shared}.ext4"
    assert overlay.stat().st_size == 128 << 20


def test_release_and_restart(manager: VolumeManager, store: Store, tmp_path: Path) -> None:
    manager.attach("data", "i1", "one", "/data")
    manager.attach("shared", "i1", "one", "/s", readonly=True)
    # A restarted server: attachments and volumes are still there.
    again = VolumeManager(store, tmp_path)
    assert {a.mount_path for a in again.attachments_of("i1")} == {"/data", "/s"}
    again.release_instance("i1")
    again.release_instance("i1")  # idempotent
    assert again.attachments_of("i1") == []
    data = again.get("data").id
    again.delete("data")
    assert not again.volume_dir(data).exists()
    assert [v.name for v in again.find()] == ["shared"]


def test_crash_mid_create_is_cleaned_at_start(
    manager: VolumeManager, store: Store, tmp_path: Path
) -> None:
    # What a server killed mid-create leaves: a `creating` record and a partial directory.
    half = VolumeRecord(id="half-made", name="half", size_gb=1)
    manager.repo.insert(half)
    (manager.root / "half-made").mkdir()
    (manager.root / "half-made" / "upload.tar.gz.tmp").write_bytes(b"partial")
    (manager.root / "stray").mkdir()
    ready = manager.get("data")
    (manager.volume_dir(ready.id) / "disk.raw.tmp").write_bytes(b"x")
    again = VolumeManager(store, tmp_path)
    assert sorted(v.name for v in again.find()) == ["data", "shared"]
    assert sorted(p.name for p in again.root.iterdir()) == sorted(v.id for v in again.find())
    assert [p.name for p in again.volume_dir(ready.id).iterdir()] == ["disk.raw"]
