"""The per-instance overlay disk: a sparse ext4 file the guest mounts as its writable layer."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ember.errors import EmberError

MIN_OVERLAY_BYTES = 64 * 1024 * 1024


def create_overlay_disk(path: Path, size_bytes: int) -> None:
    """Create a sparse ext4 image of `size_bytes`: it costs disk only for what the guest writes."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as out:
        out.truncate(max(size_bytes, MIN_OVERLAY_BYTES))
    # lazy init keeps creation instant on large disks; the guest kernel finishes it in the
    # background. No journal resize or reserved blocks: this disk belongs to one workload.
    result = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1",
         "-L", "ember-overlay", str(tmp)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise EmberError(f"cannot create overlay disk: {result.stderr.strip()}")
    tmp.rename(path)
