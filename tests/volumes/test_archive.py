"""Archive volumes: content arrives intact; hostile archives are refused and leave nothing."""

from __future__ import annotations

import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.errors import EmberError
from ember.store import Store
from ember.volumes import VolumeManager
from ember.volumes.archive import ArchiveTooLarge, Budget, extract_archive
from tests.volumes.archives import Entry, body, make_archive, zero_bomb


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[VolumeManager]:
    store = Store(tmp_path / "ember.db")
    yield VolumeManager(store, tmp_path)
    store.close()


def debugfs(disk: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(disk)], capture_output=True, text=True, check=True
    ).stdout


async def test_archive_content_modes_links_and_owners(manager: VolumeManager) -> None:
    archive = make_archive([
        Entry("app", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000),
        Entry("app/nested/deep", tarfile.DIRTYPE, mode=0o700),
        Entry("app/nested/deep/data.txt", data=b"hello volume\n", mode=0o640, uid=1000),
        Entry("app/run.sh", data=b"#!/bin/sh\necho ok\n", mode=0o755),
        Entry("app/current", tarfile.SYMTYPE, linkname="nested/deep/data.txt"),
        Entry("app/again", tarfile.LNKTYPE, linkname="app/run.sh", mode=0o755),
    ])  # fmt: skip
    volume = await manager.from_archive(body(archive), name="content", size_gb=1)
    assert volume.status == "ready" and volume.source == "archive"
    disk = manager.disk_path(volume.id)
    assert debugfs(disk, "cat /app/nested/deep/data.txt") == "hello volume\n"
    stat = debugfs(disk, "stat /app/nested/deep/data.txt")
    assert "Mode:  0640" in stat and "User:  1000" in stat
    assert "Mode:  0750" in debugfs(disk, "stat /app")
    assert "Mode:  0755" in debugfs(disk, "stat /app/run.sh")
    assert 'Fast link dest: "nested/deep/data.txt"' in debugfs(disk, "stat /app/current")
    assert "Links: 2" in debugfs(disk, "stat /app/again")
    # Only the disk is left: no upload, no staging tree.
    assert sorted(p.name for p in manager.volume_dir(volume.id).iterdir()) == ["disk.raw"]


HOSTILE = {
    "dotdot": ([Entry("../escape.txt", data=b"x")], "unsafe_archive", "'..'"),
    "nested-dotdot": ([Entry("a/../../escape", data=b"x")], "unsafe_archive", "'..'"),
    "absolute": ([Entry("/etc/evil", data=b"x")], "unsafe_archive", "absolute path"),
    "symlink-absolute": (
        [Entry("etc", tarfile.SYMTYPE, linkname="/etc")], "unsafe_archive", "is absolute"
    ),
    "symlink-escape": (
        [Entry("sub/up", tarfile.SYMTYPE, linkname="../../outside")],
        "unsafe_archive", "points out of the volume",
    ),
    "write-through-symlink": (
        [Entry("link", tarfile.SYMTYPE, linkname="."), Entry("link/../x", data=b"x")],
        "unsafe_archive", "'..'",
    ),
    "hardlink-outside": (
        [Entry("passwd", tarfile.LNKTYPE, linkname="/etc/passwd")], "unsafe_archive", "absolute"
    ),
    "hardlink-dotdot": (
        [Entry("p", tarfile.LNKTYPE, linkname="../../etc/passwd")], "unsafe_archive", "'..'"
    ),
    "hardlink-unknown": (
        [Entry("p", tarfile.LNKTYPE, linkname="etc/passwd")], "unsafe_archive", "extracted earlier"
    ),
    "device": ([Entry("null", tarfile.CHRTYPE)], "unsafe_archive", "device node"),
    "block-device": ([Entry("sda", tarfile.BLKTYPE)], "unsafe_archive", "device node"),
    "fifo": ([Entry("pipe", tarfile.FIFOTYPE)], "unsafe_archive", "FIFO"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_archive_is_refused_and_leaves_nothing(
    manager: VolumeManager, tmp_path: Path, case: str
) -> None:
    entries, code, message = HOSTILE[case]
    archive = make_archive([Entry("ok.txt", data=b"fine"), *entries])
    with pytest.raises(EmberError) as err:
        await manager.from_archive(body(archive), name="evil", size_gb=1)
    assert (err.value.status, err.value.code) == (400, code)
    assert message in err.value.message
    assert manager.find() == []
    assert list(manager.root.iterdir()) == []
    assert not (tmp_path.parent / "escape.txt").exists()


async def test_zero_bomb_against_its_limit_is_refused_before_writing(
    manager: VolumeManager,
) -> None:
    bomb = zero_bomb(1 << 30)  # 1 GiB of zeros in ~5 MB of gzip
    with pytest.raises(EmberError) as err:
        await manager.from_archive(body(bomb), name="bomb", size_gb=1)
    assert (err.value.status, err.value.code) == (400, "archive_too_large")
    assert "size_gb" in err.value.message and "'zeros'" in err.value.message
    assert manager.find() == [] and list(manager.root.iterdir()) == []


async def test_many_files_over_the_limit_stop_at_the_limit(manager: VolumeManager) -> None:
    files = [Entry(f"f{i}", data=bytes(8 << 20)) for i in range(140)]  # 1.1 GiB of zeros
    with pytest.raises(EmberError) as err:
        await manager.from_archive(body(make_archive(files)), name="many", size_gb=1)
    assert err.value.code == "archive_too_large"
    assert manager.find() == [] and list(manager.root.iterdir()) == []


def test_too_many_entries_are_counted_before_anything_is_extracted(tmp_path: Path) -> None:
    """The count comes first: the member that extraction would trip on (a name longer than
    any filesystem allows) is never reached, so the answer is about the count."""
    entries = [Entry("x" * 300, data=b"first"), *(Entry(f"e{i}") for i in range(120))]
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(make_archive(entries))
    with pytest.raises(ArchiveTooLarge, match="archive of more than 100 files and directories"):
        extract_archive(archive, tmp_path / "staging", Budget(bytes=1 << 30, inodes=100,
                                                              size_gb=1))  # fmt: skip
    assert not (tmp_path / "staging").exists()


async def test_not_a_tar_gz(manager: VolumeManager) -> None:
    for data, code in ((b"plain text, not gzip", "invalid_archive"), (b"", "invalid_archive")):
        with pytest.raises(EmberError) as err:
            await manager.from_archive(body(data), name="junk", size_gb=1)
        assert (err.value.status, err.value.code) == (400, code)
    truncated = make_archive([Entry("a", data=bytes(range(256)) * 4096)])[:-200]
    with pytest.raises(EmberError) as err:
        await manager.from_archive(body(truncated), name="cut", size_gb=1)
    assert err.value.code == "invalid_archive"
    assert manager.find() == [] and list(manager.root.iterdir()) == []


async def test_huge_pax_header_is_refused(manager: VolumeManager) -> None:
    import gzip
    import io

    info = tarfile.TarInfo("x")
    info.pax_headers = {"comment": "a" * (32 << 20)}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(EmberError) as err:
        await manager.from_archive(body(gzip.compress(raw.getvalue(), 1)), name="pax", size_gb=1)
    assert err.value.code == "unsafe_archive" and "header" in err.value.message
