"""Fast checks of the guest's config disk and overlay disk (no VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import InvalidArgument
from ember.guest.config import (
    GuestConfig,
    GuestNetwork,
    create_overlay_disk,
    read_exit_record,
    write_config_disk,
)
from ember.units import parse_size


def test_config_disk_layout_and_exit_record(tmp_path: Path) -> None:
    disk = tmp_path / "config.img"
    config = GuestConfig(
        entrypoint=["/bin/app"],
        cmd=["--x"],
        env={"A": "1"},
        network=GuestNetwork(ip="10.0.0.2", prefix=24, gateway="10.0.0.1", dns=["1.1.1.1"]),
    )
    write_config_disk(disk, config)
    data = disk.read_bytes()
    assert len(data) % 4096 == 0 and data[:4096] == b"\0" * 4096
    records = data[4096:].rstrip(b"\0").split(b"\0")
    assert records[:3] == [b"arg=/bin/app", b"arg=--x", b"env=A=1"]
    assert b"net.ip=10.0.0.2" in records and b"net.dns=1.1.1.1" in records
    assert read_exit_record(disk) is None
    with disk.open("r+b") as f:
        f.write(b'{"exit_code":3,"signal":0,"message":"exited with code 3"}')
    record = read_exit_record(disk)
    assert record is not None and record.exit_code == 3


def test_config_rejects_bad_env_names(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        write_config_disk(tmp_path / "c", GuestConfig(env={"A=B": "x"}))


def test_overlay_larger_than_the_filesystem_allows_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="overlay_size: 999TB"):
        create_overlay_disk(tmp_path / "overlay.ext4", parse_size("999TB", field="overlay_size"))
    assert list(tmp_path.iterdir()) == []
