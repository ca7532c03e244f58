"""Build an image's root disk from an unpacked tree: erofs (lz4), or ext4 as a fallback.

erofs is read-only and compressed, which is exactly what a shared image root
is: every instance of the image mounts the same file read-only under its own
overlay. ext4 (`mkfs.ext4 -d`) is the fallback for hosts without erofs-utils.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ember.errors import EmberError


class RootfsError(EmberError):
    code = "conversion_failed"


def _tree_usage(root: Path) -> tuple[int, int]:
    """(bytes allocated, inodes) of the tree: what an ext4 copy of it needs at least."""
    total, inodes = 0, 1
    for dirpath, dirs, files in os.walk(root):
        inodes += len(dirs) + len(files)
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total, inodes


def _mkfs_erofs(src: Path, out: Path, compress: bool) -> subprocess.CompletedProcess[str]:
    # No --all-root / --force-uid: file ownership is part of the image.
    return subprocess.run(
        ["mkfs.erofs", "--quiet", *(["-zlz4"] if compress else []), str(out), str(src)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def _mkfs_ext4(src: Path, out: Path, compress: bool) -> subprocess.CompletedProcess[str]:
    used, inodes = _tree_usage(src)
    # Room for metadata (block maps, directories) beside the data, and inodes for every entry.
    size = int(used * 1.3) + inodes * 512 + 64 * 1024 * 1024
    with out.open("wb") as disk:
        disk.truncate(size)
    return subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(inodes + 1024), "-d", str(src), str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def build_rootfs(src: Path, out: Path, compress: bool = True) -> str:
    """Write `out` atomically from the tree at `src`; return the filesystem type used.

    `compress=False` builds an uncompressed erofs: for data lz4 cannot shrink,
    trying costs most of the build time and gains nothing.
    """
    tmp = out.with_name(out.name + ".tmp")
    attempts = [("erofs", _mkfs_erofs)] if shutil.which("mkfs.erofs") else []
    attempts.append(("ext4", _mkfs_ext4))
    errors = []
    for fs_type, build in attempts:
        tmp.unlink(missing_ok=True)
        result = build(src, tmp, compress)
        if result.returncode == 0:
            os.replace(tmp, out)
            return fs_type
        errors.append(f"mkfs.{fs_type}: {result.stderr.strip() or result.returncode}")
    tmp.unlink(missing_ok=True)
    raise RootfsError("cannot build the root disk: " + "; ".join(errors))
