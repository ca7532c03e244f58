"""Where named snapshots live: the one place that knows their files.

```
<data_dir>/snapshots/<id>/         kept until the snapshot is deleted (it outlives its
                                   source instance: a fork can still be made from it)
    overlay.ext4  config.disk      sparse copies of the source's disks
    volumes/<name>                 the private upper disks of read-only volume overlays
    vmstate                        Standby: QEMU's migration stream (device state)
    memory.ram                     Standby: guest RAM (sparse), or
    memory.ram.zst|.lz4            compressed in the background
```
Files are written under `<name>.partial` and renamed, so a file that exists
is complete; the record is inserted once every file is in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ember.snapshots.compression import compressed_name


@dataclass(frozen=True, slots=True)
class SnapshotFiles:
    dir: Path

    @property
    def overlay(self) -> Path:
        return self.dir / "overlay.ext4"

    @property
    def config(self) -> Path:
        return self.dir / "config.disk"

    def volume_disk(self, name: str) -> Path:
        return self.dir / "volumes" / name

    @property
    def vmstate(self) -> Path:
        return self.dir / "vmstate"

    @property
    def memory(self) -> Path:
        return self.dir / "memory.ram"

    def payload(self, memory_in_file: bool) -> Path:
        """The memory payload: the RAM file, or the stream when it carries the RAM."""
        return self.memory if memory_in_file else self.vmstate

    def compressed(self, payload: Path, algorithm: str) -> Path:
        return self.dir / compressed_name(payload, algorithm)


@dataclass(frozen=True, slots=True)
class SnapshotLayout:
    root: Path

    def of(self, snapshot_id: str) -> SnapshotFiles:
        return SnapshotFiles(self.root / snapshot_id)

    def ids_on_disk(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        return {p.name for p in self.root.iterdir() if p.is_dir()}
