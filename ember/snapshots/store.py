"""Snapshot and schedule records in SQLite (tables of migration 8)."""

from __future__ import annotations

import sqlite3

from ember.errors import Conflict, NotFound
from ember.snapshots.models import ScheduleRecord, SnapshotKind, SnapshotRecord
from ember.store import Store
from ember.store.lookup import find_one


class SnapshotStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    # ---- snapshots ---------------------------------------------------------------------

    def insert(self, record: SnapshotRecord) -> SnapshotRecord:
        try:
            with self.store.transaction() as conn:
                conn.execute(
                    "INSERT INTO snapshots (id, instance_id, name, data) VALUES (?, ?, ?, ?)",
                    (record.id, record.source_instance_id, record.name, record.model_dump_json()),
                )
        except sqlite3.IntegrityError as exc:
            raise Conflict(
                f"snapshot {record.name!r} already exists for instance "
                f"{record.source_instance_name!r}",
                code="already_exists",
            ) from exc
        return record

    def name_taken(self, instance_id: str, name: str) -> bool:
        sql = "SELECT 1 FROM snapshots WHERE instance_id = ? AND name = ?"
        return bool(self.store.query(sql, (instance_id, name)))

    def update(self, snapshot_id: str, record: SnapshotRecord) -> None:
        with self.store.transaction() as conn:
            sql = "UPDATE snapshots SET data = ? WHERE id = ?"
            conn.execute(sql, (record.model_dump_json(), snapshot_id))

    def get(self, snapshot_id: str) -> SnapshotRecord:
        rows = self.store.query("SELECT data FROM snapshots WHERE id = ?", (snapshot_id,))
        if not rows:
            raise NotFound(f"snapshot {snapshot_id!r} not found")
        return SnapshotRecord.model_validate_json(rows[0]["data"])

    def resolve(self, ref: str, instance_id: str | None = None) -> SnapshotRecord:
        """By id, name or unique id prefix (`ember.store.lookup`). With `instance_id`, names
        and prefixes are looked up among that instance's snapshots (a name is unique only
        per instance); a full id is always found, so its caller can say whose it is."""

        def by_id(snapshot_id: str) -> SnapshotRecord | None:
            found = self.find(snapshot_id=snapshot_id)
            return found[0] if found else None

        return find_one(
            ref, "snapshot", by_id=by_id,
            by_name=lambda name: self.find(name=name, instance_id=instance_id),
            by_id_prefix=lambda prefix: self.find(id_prefix=prefix, instance_id=instance_id),
        )  # fmt: skip

    def find(
        self,
        *,
        kind: SnapshotKind | None = None,
        name: str | None = None,
        instance_id: str | None = None,
        tags: dict[str, str] | None = None,
        snapshot_id: str | None = None,
        id_prefix: str | None = None,
        template: bool | None = None,
    ) -> list[SnapshotRecord]:
        """Oldest first; every given filter must hold."""
        rows = self.store.query("SELECT data FROM snapshots ORDER BY created_at, id")
        wanted = (tags or {}).items()
        found = [SnapshotRecord.model_validate_json(row["data"]) for row in rows]
        return [
            s
            for s in found
            if (snapshot_id is None or s.id == snapshot_id)
            and (id_prefix is None or s.id.startswith(id_prefix))
            and (kind is None or s.kind == kind)
            and (name is None or s.name == name)
            and (template is None or s.template == template)
            and (instance_id is None or s.source_instance_id == instance_id)
            and wanted <= s.tags.items()
        ]

    def delete(self, snapshot_id: str) -> bool:
        with self.store.transaction() as conn:
            cur = conn.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))
        return cur.rowcount > 0

    def ids(self) -> set[str]:
        return {row["id"] for row in self.store.query("SELECT id FROM snapshots")}

    # ---- schedules ---------------------------------------------------------------------

    def put_schedule(self, schedule: ScheduleRecord) -> ScheduleRecord:
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO snapshot_schedules (instance_id, data) VALUES (?, ?) "
                "ON CONFLICT(instance_id) DO UPDATE SET data = excluded.data",
                (schedule.instance_id, schedule.model_dump_json()),
            )
        return schedule

    def schedule(self, instance_id: str) -> ScheduleRecord | None:
        sql = "SELECT data FROM snapshot_schedules WHERE instance_id = ?"
        rows = self.store.query(sql, (instance_id,))
        return ScheduleRecord.model_validate_json(rows[0]["data"]) if rows else None

    def schedules(self) -> list[ScheduleRecord]:
        rows = self.store.query("SELECT data FROM snapshot_schedules ORDER BY instance_id")
        return [ScheduleRecord.model_validate_json(row["data"]) for row in rows]

    def delete_schedule(self, instance_id: str) -> bool:
        with self.store.transaction() as conn:
            sql = "DELETE FROM snapshot_schedules WHERE instance_id = ?"
            cur = conn.execute(sql, (instance_id,))
        return cur.rowcount > 0
