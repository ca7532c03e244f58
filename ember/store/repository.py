"""A typed repository over one resource table: records are pydantic models kept as JSON."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Generic, TypeVar

from pydantic import BaseModel

from ember.errors import Conflict, NotFound
from ember.store.db import Store
from ember.store.lookup import find_one


class StoredRecord(BaseModel):
    """What every stored resource has: a unique id and a unique name."""

    id: str
    name: str


Record = TypeVar("Record", bound=StoredRecord)


class Repository(Generic[Record]):
    """CRUD for one table of `StoredRecord`s.

    `kind` names the resource in error messages ("image", "instance").
    """

    def __init__(self, store: Store, table: str, model: type[Record], kind: str) -> None:
        self.store, self.table, self.model, self.kind = store, table, model, kind

    def _load(self, row: sqlite3.Row) -> Record:
        return self.model.model_validate_json(row["data"])

    def insert(self, record: Record) -> Record:
        try:
            with self.store.transaction() as conn:
                conn.execute(
                    f"INSERT INTO {self.table} (id, name, data) VALUES (?, ?, ?)",
                    (record.id, record.name, record.model_dump_json()),
                )
        except sqlite3.IntegrityError as exc:
            raise Conflict(
                f"{self.kind} {record.name!r} already exists", code="already_exists"
            ) from exc
        return record

    def save(self, record: Record) -> Record:
        """Replace the stored record that has the same id."""
        with self.store.transaction() as conn:
            cur = conn.execute(
                f"UPDATE {self.table} SET name = ?, data = ? WHERE id = ?",
                (record.name, record.model_dump_json(), record.id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"{self.kind} {record.id!r} not found")
        return record

    def update(self, record_id: str, change: Callable[[Record], None]) -> Record:
        """Read, change and write one record atomically."""
        with self.store.transaction() as conn:
            sql = f"SELECT data FROM {self.table} WHERE id = ?"
            row = conn.execute(sql, (record_id,)).fetchone()
            if row is None:
                raise NotFound(f"{self.kind} {record_id!r} not found")
            record = self._load(row)
            change(record)
            conn.execute(
                f"UPDATE {self.table} SET name = ?, data = ? WHERE id = ?",
                (record.name, record.model_dump_json(), record_id),
            )
        return record

    def get(self, record_id: str) -> Record | None:
        rows = self.store.query(f"SELECT data FROM {self.table} WHERE id = ?", (record_id,))
        return self._load(rows[0]) if rows else None

    def by_name(self, name: str) -> Record | None:
        rows = self.store.query(f"SELECT data FROM {self.table} WHERE name = ?", (name,))
        return self._load(rows[0]) if rows else None

    def by_id_prefix(self, prefix: str) -> list[Record]:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.store.query(
            f"SELECT data FROM {self.table} WHERE id LIKE ? ESCAPE '\\'", (escaped + "%",)
        )
        return [self._load(row) for row in rows]

    def resolve(self, ref: str) -> Record:
        """By id, name or unique id prefix (`ember.store.lookup`); NotFound otherwise."""
        return find_one(
            ref, self.kind, by_id=self.get, by_name=lambda name: _listed(self.by_name(name)),
            by_id_prefix=self.by_id_prefix,
        )  # fmt: skip

    def all(self) -> list[Record]:
        rows = self.store.query(f"SELECT data FROM {self.table} ORDER BY created_at, id")
        return [self._load(row) for row in rows]

    def delete(self, record_id: str) -> bool:
        with self.store.transaction() as conn:
            cur = conn.execute(f"DELETE FROM {self.table} WHERE id = ?", (record_id,))
        return cur.rowcount > 0


def _listed(record: Record | None) -> list[Record]:
    return [record] if record is not None else []
