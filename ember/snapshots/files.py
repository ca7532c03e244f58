"""Copying a VM's disks and memory without copying empty space.

Measured here (ext4, no reflink; a 10 GB overlay holding 54 MB): `cp
--sparse=always` 30-54 ms, `qemu-img create -f qcow2 -b` 45-121 ms (the
process start dominates), and a qcow2 fork disk would also tie the copy to
its base and need qcow2 in the VMM's drive options. A 256 MB RAM file with
100 MB touched copies in 66-78 ms and comes out at 50 MB: `--sparse=always`
also turns zero blocks into holes. So: sparse copies, each complete or
absent (written as `<name>.partial`, then renamed).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ember.errors import Unavailable
from ember.snapshots.compression import Algorithm, allocated_bytes, decompress_file


async def copy_sparse(src: Path, dst: Path) -> int:
    """Copy `src` to `dst` keeping holes (and making holes of zero blocks); the bytes the
    copy takes on disk."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")
    proc = await asyncio.create_subprocess_exec(
        "cp", "--sparse=always", str(src), str(partial),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise Unavailable(f"cannot copy {src.name}: {err.decode(errors='replace').strip()}")
    os.replace(partial, dst)
    return allocated_bytes(dst)


async def copy_payload(
    raw: Path, compressed: Path | None, algorithm: Algorithm | None, dst: Path
) -> None:
    """The raw memory payload at `dst`: copied from `raw`, else decompressed (sparse) from
    `compressed`."""
    if raw.exists():
        await copy_sparse(raw, dst)
    elif compressed is not None and algorithm is not None and compressed.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(decompress_file, compressed, dst, algorithm)
    else:
        raise Unavailable(f"the saved memory is missing: neither {raw} nor {compressed}")


def tree_bytes(root: Path) -> int:
    """What every file under `root` takes on disk."""
    return sum(allocated_bytes(p) for p in root.rglob("*") if p.is_file())
