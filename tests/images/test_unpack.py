"""The layer unpacker on crafted tars: whiteouts, links, ownership, and hostile entries."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from ember.images.unpack import UnsafeLayer, unpack_layers
from ember.testkit.image import (
    Layer,
    directory,
    file,
    hardlink,
    layer_tar,
    opaque,
    symlink,
    whiteout,
)


def write_layers(tmp_path: Path, *layers: Layer) -> list[Path]:
    paths = []
    for i, layer in enumerate(layers):
        path = tmp_path / f"layer{i}.tar.gz"
        path.write_bytes(layer_tar(layer))
        paths.append(path)
    return paths


def raw_tar(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / f"raw{len(list(tmp_path.iterdir()))}.tar"
    path.write_bytes(buffer.getvalue())
    return path


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_layers_apply_in_order_with_whiteouts(tmp_path: Path) -> None:
    base: Layer = {
        "etc": directory(),
        "etc/keep": file("keep"),
        "etc/gone": file("gone"),
        "opt": directory(),
        "opt/old": file("old"),
        "opt/sub": directory(),
        "opt/sub/deep": file("deep"),
    }
    top: Layer = dict([whiteout("etc/gone"), opaque("opt")])
    top["opt/new"] = file("new")
    top["etc/keep"] = file("changed", 0o600, uid=1000, gid=1000)
    root = tmp_path / "root"
    unpack_layers(write_layers(tmp_path, base, top), root)
    assert (root / "etc/keep").read_text() == "changed"
    assert not (root / "etc/gone").exists()
    assert sorted(os.listdir(root / "opt")) == ["new"]
    info = os.lstat(root / "etc/keep")
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1000, 1000, 0o600)
    assert not any(name.startswith(".wh.") for _, _, names in os.walk(root) for name in names)


def test_links_and_modes(tmp_path: Path) -> None:
    layer: Layer = {
        "bin": directory(),
        "bin/tool": file("#!/bin/sh\n", 0o4755),
        "bin/alias": symlink("tool"),
        "bin/same": hardlink("bin/tool"),
        "abs": symlink("/etc/passwd"),  # may point anywhere; it is never followed on write
    }
    root = tmp_path / "root"
    unpack_layers(write_layers(tmp_path, layer), root)
    assert stat.S_IMODE(os.stat(root / "bin/tool").st_mode) == 0o4755
    assert os.readlink(root / "bin/alias") == "tool"
    assert os.stat(root / "bin/same").st_ino == os.stat(root / "bin/tool").st_ino
    assert os.readlink(root / "abs") == "/etc/passwd"


def test_file_replaces_directory_and_back(tmp_path: Path) -> None:
    first: Layer = {"x": directory(), "x/inner": file("a")}
    second: Layer = {"x": file("now a file")}
    root = tmp_path / "root"
    unpack_layers(write_layers(tmp_path, first, second), root)
    assert (root / "x").read_text() == "now a file"


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/../escape"])
def test_path_traversal_is_refused(tmp_path: Path, name: str) -> None:
    layer = raw_tar(tmp_path, (entry(name), b"x"))
    with pytest.raises(UnsafeLayer, match="escapes"):
        unpack_layers([layer], tmp_path / "root")
    assert not (tmp_path / "escape").exists()


def test_writing_through_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    layer = raw_tar(
        tmp_path,
        (entry("link", tarfile.SYMTYPE, str(outside)), b""),
        (entry("link/owned"), b"pwned"),
    )
    with pytest.raises(UnsafeLayer, match="symlink"):
        unpack_layers([layer], tmp_path / "root")
    assert not (outside / "owned").exists()


def test_hard_link_out_of_the_root_is_refused(tmp_path: Path) -> None:
    layer = raw_tar(tmp_path, (entry("stolen", tarfile.LNKTYPE, "../../etc/passwd"), b""))
    with pytest.raises(UnsafeLayer):
        unpack_layers([layer], tmp_path / "root")


def test_uncompressed_and_absolute_paths(tmp_path: Path) -> None:
    layer = raw_tar(tmp_path, (entry("/etc/hostname"), b"box\n"), (entry("./a/b"), b"b"))
    root = tmp_path / "root"
    unpack_layers([layer], root)
    assert (root / "etc/hostname").read_text() == "box\n"
    assert (root / "a/b").read_text() == "b"
