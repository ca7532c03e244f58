"""Snapshots' lower layer: the saved-VM model and layout, compression, sparse copies,
snapshot and schedule records (see README.md; the operations are in ember/instances/saved)."""

from ember.snapshots.layout import SavedVMFiles, SnapshotLayout
from ember.snapshots.models import SavedVM, SnapshotKind, SnapshotRecord
from ember.snapshots.store import SnapshotStore

__all__ = ["SavedVM", "SavedVMFiles", "SnapshotKind", "SnapshotLayout", "SnapshotRecord",
           "SnapshotStore"]  # fmt: skip
