"""Snapshots are found by id, name or unique id prefix, as every other resource is
(`ember.store.lookup`): `snapshot fork s1` and the 12-character id `snapshot ls` shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.errors import InvalidArgument, NotFound
from ember.ids import new_id
from ember.snapshots.models import SnapshotRecord
from ember.snapshots.store import SnapshotStore
from ember.store import Store


def snapshot(store: SnapshotStore, name: str, instance: str, snapshot_id: str) -> SnapshotRecord:
    record = SnapshotRecord(
        id=snapshot_id, name=name, kind="Stopped", source_instance_id=instance,
        source_instance_name=instance, source_hypervisor="qemu", source={},
    )  # fmt: skip
    return store.insert(record)


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(Store(tmp_path / "ember.db"))


def test_by_id_name_and_unique_prefix(store: SnapshotStore) -> None:
    one = snapshot(store, "s1", "box", new_id())
    two = snapshot(store, "s2", "box", new_id())
    assert store.resolve(one.id) == one
    assert store.resolve("s2") == two
    assert store.resolve(one.id[:12]) == one
    with pytest.raises(NotFound, match="snapshot 'nope' not found"):
        store.resolve("nope")


def test_ambiguous_names_and_prefixes_are_refused_not_guessed(store: SnapshotStore) -> None:
    first = snapshot(store, "nightly", "a", "k" + "0" * 22 + "1")
    second = snapshot(store, "nightly", "b", "k" + "0" * 22 + "2")
    with pytest.raises(InvalidArgument, match="snapshot name 'nightly' is ambiguous"):
        store.resolve("nightly")
    with pytest.raises(InvalidArgument, match="id prefix 'k000' is ambiguous"):
        store.resolve("k000")
    # Among one instance's snapshots (restore into it) the name is unique again.
    assert store.resolve("nightly", instance_id="b") == second
    assert store.resolve("k000", instance_id="a") == first
    # A full id is found whoever took it: the restore then says whose it is.
    assert store.resolve(second.id, instance_id="a") == second
