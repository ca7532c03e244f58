"""Where a saved VM's files are: one shape for an instance's directory and a snapshot's.

```
<dir>/                             an instance's (`<data_dir>/instances/<id>`) or a named
                                   snapshot's (`<data_dir>/snapshots/<id>`)
    overlay.ext4  config.disk      the writable root layer and the guest config disk
    volume-overlay-<v>.ext4        private upper disks of read-only volume overlays
    memory.ram                     guest RAM (shared file mapping, sparse), when the VM
                                   ran on one (x-ignore-shared)
    standby/                       the saved VM
        vmstate                    QEMU's migration stream (device state; all RAM when
                                   the VM ran without memory.ram)
        memory.ram.zst|.lz4        the memory payload compressed in the background
        vmstate.zst|.lz4
```
Files are written under `<name>.partial` and renamed, so a file that exists is
complete; a snapshot's record is inserted once every file is in place.

The RAM file stays at `<dir>/memory.ram` at standby rather than moving into
`standby/`: a running VM maps it there, and a save that wrote only device state
leaves it valid where it is; the record's `memory_in_file` says which file is
the payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ember.snapshots.compression import compressed_name

__all__ = ["SavedVMFiles", "SnapshotLayout"]


@dataclass(frozen=True, slots=True)
class SavedVMFiles:
    """The paths of a saved VM and the disks it goes with, under `dir`."""

    dir: Path

    @property
    def overlay(self) -> Path:
        return self.dir / "overlay.ext4"

    @property
    def config(self) -> Path:
        return self.dir / "config.disk"

    def volume_disk(self, name: str) -> Path:
        """A volume's private upper disk, by file name (`volume-overlay-<v>.ext4`)."""
        return self.dir / name

    @property
    def memory(self) -> Path:
        return self.dir / "memory.ram"

    @property
    def saved_dir(self) -> Path:
        return self.dir / "standby"

    @property
    def vmstate(self) -> Path:
        return self.saved_dir / "vmstate"

    def payload(self, memory_in_file: bool) -> Path:
        """The memory payload: the RAM file, or the stream when it carries the RAM."""
        return self.memory if memory_in_file else self.vmstate

    def compressed(self, payload: Path, algorithm: str) -> Path:
        """Where the memory payload goes compressed."""
        return self.saved_dir / compressed_name(payload, algorithm)


@dataclass(frozen=True, slots=True)
class SnapshotLayout:
    root: Path

    def of(self, snapshot_id: str) -> SavedVMFiles:
        return SavedVMFiles(self.root / snapshot_id)

    def ids_on_disk(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        return {p.name for p in self.root.iterdir() if p.is_dir()}
