"""The layer unpacker on crafted tars: whiteouts, links, ownership, and hostile entries."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from ember.images.unpack import CorruptLayer, UnsafeLayer, unpack_layers
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
    tmp_path.mkdir(exist_ok=True)
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


@pytest.mark.parametrize("link", ["ABS", "../../../..", "/"])
def test_symlinked_parents_are_followed_inside_the_root(tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = str(outside) if link == "ABS" else link
    layer = raw_tar(
        tmp_path,
        (entry("link", tarfile.SYMTYPE, target), b""),
        (entry("link/owned"), b"contained"),
    )
    root = tmp_path / "root"
    unpack_layers([layer], root)
    assert not (outside / "owned").exists()
    landed = root / str(outside).lstrip("/") / "owned" if link == "ABS" else root / "owned"
    assert landed.read_text() == "contained"
    assert os.readlink(root / "link") == target  # the link itself is kept as written


def test_merged_usr_layout(tmp_path: Path) -> None:
    base: Layer = {"usr": directory(), "usr/lib": directory(), "lib": symlink("usr/lib")}
    top: Layer = {"lib/libx.so": file("x"), **dict([whiteout("lib/gone")])}
    first = write_layers(tmp_path, base, {"usr/lib/gone": file("g")})
    root = tmp_path / "root"
    unpack_layers([*first, *write_layers(tmp_path / "top", top)], root)
    assert (root / "usr/lib/libx.so").read_text() == "x"
    assert not (root / "usr/lib/gone").exists()
    assert os.readlink(root / "lib") == "usr/lib"


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    layer = raw_tar(
        tmp_path,
        (entry("a", tarfile.SYMTYPE, "b"), b""),
        (entry("b", tarfile.SYMTYPE, "a"), b""),
        (entry("a/file"), b"x"),
    )
    with pytest.raises(UnsafeLayer, match="symlinks"):
        unpack_layers([layer], tmp_path / "root")


def test_whiteout_of_missing_path_creates_nothing(tmp_path: Path) -> None:
    layer: Layer = dict([whiteout("no/such/dir/file")])
    root = tmp_path / "root"
    unpack_layers(write_layers(tmp_path, layer), root)
    assert os.listdir(root) == []


def test_opaque_marker_in_any_order_hides_lower_content_at_every_depth(tmp_path: Path) -> None:
    base: Layer = {
        "d": directory(),
        "d/old": file("old"),
        "d/sub": directory(),
        "d/sub/lower": file("lower"),
    }
    # The marker comes after this layer's own entries: they must survive it.
    upper = raw_tar(
        tmp_path,
        (entry("d/sub", tarfile.DIRTYPE), b""),
        (entry("d/sub/upper"), b"upper"),
        (entry("d/.wh..wh..opq"), b""),
    )
    root = tmp_path / "root"
    unpack_layers([*write_layers(tmp_path / "base", base), upper], root)
    assert sorted(os.listdir(root / "d")) == ["sub"]
    assert sorted(os.listdir(root / "d/sub")) == ["upper"]


def test_zstd_layers_devices_and_xattrs(tmp_path: Path) -> None:
    info = entry("dev/null", tarfile.CHRTYPE)
    info.devmajor, info.devminor = 1, 3
    capable = entry("bin/ping")
    capable.pax_headers = {"SCHILY.xattr.trusted.ember": "yes"}
    plain = raw_tar(tmp_path, (entry("dev", tarfile.DIRTYPE), b""), (info, b""), (capable, b"p"))
    compressed = tmp_path / "layer.tar.zst"
    compressed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    root = tmp_path / "root"
    stats = unpack_layers([compressed, plain], root)
    # Only the compressed layer counts: a plain tar says nothing about compressibility.
    assert stats.compressed == compressed.stat().st_size < stats.expanded
    device = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(device.st_mode) and os.major(device.st_rdev) == 1
    assert os.getxattr(root / "bin/ping", "trusted.ember") == b"yes"


def test_hard_links_across_layers_and_to_directories(tmp_path: Path) -> None:
    base: Layer = {"data": file("shared"), "dir": directory()}
    root = tmp_path / "root"
    unpack_layers(write_layers(tmp_path, base, {"again": hardlink("data")}), root)
    assert os.stat(root / "again").st_ino == os.stat(root / "data").st_ino
    to_dir = raw_tar(tmp_path, (entry("alias", tarfile.LNKTYPE, "dir"), b""))
    with pytest.raises(UnsafeLayer, match="hard link"):
        unpack_layers([to_dir], root)


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


def test_empty_and_corrupt_layers(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    gzipped_empty = tmp_path / "empty.gz"
    gzipped_empty.write_bytes(gzip.compress(b""))
    root = tmp_path / "root"
    unpack_layers([empty, gzipped_empty], root)  # no entries: nothing to do
    assert os.listdir(root) == []
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(layer_tar({"a": file("x" * 100_000)})[:-40])
    with pytest.raises(CorruptLayer, match=r"layer truncated\.gz"):
        unpack_layers([truncated], root)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x1f\x8bnot really gzip" * 10)
    with pytest.raises(CorruptLayer, match="cannot be decompressed"):
        unpack_layers([garbage], root)
