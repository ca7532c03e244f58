from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from ember.errors import Conflict, NotFound
from ember.store import Repository, Store, StoredRecord
from ember.store.migrations import MIGRATIONS


class Thing(StoredRecord):
    count: int = 0


def things(store: Store) -> Repository[Thing]:
    return Repository(store, "images", Thing, "thing")


def test_migrates_from_empty_and_is_idempotent(tmp_path: Path) -> None:
    store = Store(tmp_path / "ember.db")
    assert store.schema_version == len(MIGRATIONS)
    store.close()
    again = Store(tmp_path / "ember.db")
    assert again.schema_version == len(MIGRATIONS)
    mode = again.query("PRAGMA journal_mode")[0][0]
    assert mode == "wal"


def test_failed_migration_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(tmp_path / "ember.db").close()
    broken = [*MIGRATIONS, ("CREATE TABLE extra (x INTEGER)", "NOT SQL")]
    monkeypatch.setattr("ember.store.db.MIGRATIONS", broken)
    with pytest.raises(sqlite3.OperationalError):
        Store(tmp_path / "ember.db")
    monkeypatch.undo()
    store = Store(tmp_path / "ember.db")
    assert store.schema_version == len(MIGRATIONS)
    assert not store.query("SELECT name FROM sqlite_master WHERE name = 'extra'")


def test_repository_crud(tmp_path: Path) -> None:
    repo = things(Store(tmp_path / "ember.db"))
    repo.insert(Thing(id="a1", name="one"))
    with pytest.raises(Conflict):
        repo.insert(Thing(id="a2", name="one"))
    assert repo.by_name("one") == Thing(id="a1", name="one")
    repo.update("a1", lambda t: setattr(t, "count", 5))
    assert repo.get("a1") == Thing(id="a1", name="one", count=5)
    assert [t.id for t in repo.by_id_prefix("a")] == ["a1"]
    assert repo.by_id_prefix("%") == []
    with pytest.raises(NotFound):
        repo.save(Thing(id="zz", name="two"))
    assert repo.delete("a1") and not repo.delete("a1")
    assert repo.all() == []


def test_concurrent_writers_in_threads_lose_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "ember.db")
    repo = things(store)
    repo.insert(Thing(id="c", name="counter"))

    def bump() -> None:
        for _ in range(50):
            repo.update("c", lambda t: setattr(t, "count", t.count + 1))

    workers = [threading.Thread(target=bump) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    record = repo.get("c")
    assert record is not None and record.count == 400


def _bump_in_process(path: str) -> None:
    repo = things(Store(Path(path)))
    for _ in range(25):
        repo.update("c", lambda t: setattr(t, "count", t.count + 1))


def test_concurrent_writers_in_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ember.db"
    things(Store(path)).insert(Thing(id="c", name="counter"))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump_in_process, args=(str(path),)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    record = things(Store(path)).get("c")
    assert record is not None and record.count == 100
