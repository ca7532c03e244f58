"""Volumes: create (empty or from an archive), find, delete, attach and detach."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Literal

from ember.errors import Conflict, InvalidArgument, InvalidState, NotFound, Unavailable
from ember.guest.config import (
    MIN_OVERLAY_BYTES,
    DiskFull,
    GuestVolume,
    create_ext4_disk,
    create_overlay_disk,
)
from ember.hypervisor import DiskSpec
from ember.ids import new_id
from ember.store import Repository, Store
from ember.units import format_size, parse_size
from ember.validation import validate_name, validate_tags
from ember.volumes.archive import ArchiveTooLarge, Budget, extract_archive
from ember.volumes.models import Attachment, VolumeRecord, VolumeStatus
from ember.volumes.mounts import (
    guest_mounts,
    overlay_disk_path,
    plan_disks,
    validate_mount_path,
)
from ember.volumes.slots import SlotTable, create_empty_slots, fresh_table

log = logging.getLogger(__name__)

GB = 1024**3
MAX_SIZE_GB = 64 * 1024  # 64 TB: beyond this ext4 needs options we do not set
MAX_ATTACHMENTS = 8  # per instance: microvm has a limited number of virtio-mmio slots
DISK = "disk.raw"
UPLOAD = "upload.tar.gz.tmp"
STAGING = "staging.tmp"


class VolumeManager:
    """Volume records in the store, disks under ``<data_dir>/volumes/<id>/disk.raw``.

    A volume is inserted as ``creating`` (which reserves its id and name) and
    turns ``ready`` only once its disk is complete under its final name; a
    server that dies mid-create leaves a ``creating`` record that the next
    start removes with its directory. Attachments live in their own table and
    are checked and written in one transaction, so two racing attaches cannot
    both take a volume read-write.
    """

    def __init__(self, store: Store, data_dir: Path) -> None:
        self.store = store
        self.repo: Repository[VolumeRecord] = Repository(store, "volumes", VolumeRecord, "volume")
        self.root = data_dir / "volumes"
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)  # archive staging keeps its owners and modes: host-private
        self._budgets: dict[int, Budget] = {}
        self.recover()

    # --- paths -----------------------------------------------------------------

    def volume_dir(self, volume_id: str) -> Path:
        return self.root / volume_id

    def disk_path(self, volume_id: str) -> Path:
        return self.volume_dir(volume_id) / DISK

    # --- lookups ---------------------------------------------------------------

    def get(self, ref: str) -> VolumeRecord:
        """By id, name or unique id prefix."""
        return self.repo.resolve(ref)

    def find(self, tags: dict[str, str] | None = None) -> list[VolumeRecord]:
        wanted = (tags or {}).items()
        return [r for r in self.repo.all() if wanted <= r.tags.items()]

    def attachments_of_volume(self, volume_id: str) -> list[Attachment]:
        rows = self.store.query(
            "SELECT data FROM volume_attachments WHERE volume_id = ? ORDER BY rowid", (volume_id,)
        )
        return [Attachment.model_validate_json(row["data"]) for row in rows]

    def attachments_of(self, instance_id: str) -> list[Attachment]:
        rows = self.store.query(
            "SELECT data FROM volume_attachments WHERE instance_id = ? ORDER BY rowid",
            (instance_id,),
        )
        return [Attachment.model_validate_json(row["data"]) for row in rows]

    # --- create ----------------------------------------------------------------

    def _reserve(
        self, name: str, size_gb: int, volume_id: str | None, tags: dict[str, str] | None,
        source: Literal["empty", "archive"],
    ) -> VolumeRecord:  # fmt: skip
        validate_name(name)
        if volume_id is not None:
            validate_name(volume_id, field="id")
        if isinstance(size_gb, bool) or not 1 <= size_gb <= MAX_SIZE_GB:
            raise InvalidArgument(f"size_gb: must be between 1 and {MAX_SIZE_GB}, got {size_gb}")
        record = VolumeRecord(
            id=volume_id or new_id(), name=name, size_gb=size_gb,
            tags=validate_tags(tags), source=source,
        )  # fmt: skip
        if self.repo.get(record.id) is not None:
            raise Conflict(f"volume id {record.id!r} already exists", code="already_exists")
        self.repo.insert(record)  # a name taken is a 409 already_exists
        shutil.rmtree(self.volume_dir(record.id), ignore_errors=True)
        self.volume_dir(record.id).mkdir(mode=0o700)
        return record

    def _ready(self, record: VolumeRecord) -> VolumeRecord:
        def mark(r: VolumeRecord) -> None:
            r.status = VolumeStatus.READY

        return self.repo.update(record.id, mark)

    def _discard(self, record: VolumeRecord) -> None:
        self.repo.delete(record.id)
        shutil.rmtree(self.volume_dir(record.id), ignore_errors=True)

    async def create(
        self, name: str, size_gb: int, *, id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> VolumeRecord:  # fmt: skip
        """An empty sparse ext4 volume of ``size_gb`` GiB."""
        record = self._reserve(name, size_gb, id, tags, "empty")
        try:
            await asyncio.to_thread(
                create_ext4_disk, self.disk_path(record.id), size_gb * GB, field="size_gb"
            )
        except BaseException:
            self._discard(record)
            raise
        return self._ready(record)

    async def from_archive(
        self, chunks: AsyncIterable[bytes], *, name: str, size_gb: int, id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> VolumeRecord:  # fmt: skip
        """A volume holding a tar.gz's content; ``size_gb`` bounds what the content may take."""
        record = self._reserve(name, size_gb, id, tags, "archive")
        try:
            upload = self.volume_dir(record.id) / UPLOAD
            await self._receive(chunks, upload, size_gb)
            await asyncio.to_thread(self._build_from_archive, record, upload)
        except BaseException:
            self._discard(record)
            raise
        return self._ready(record)

    async def _receive(self, chunks: AsyncIterable[bytes], path: Path, size_gb: int) -> None:
        # Compressed content is (nearly) never larger than itself; the slack covers
        # tar headers and incompressible data.
        cap = size_gb * GB + size_gb * GB // 4 + (64 << 20)
        received = 0
        with path.open("wb") as f:
            async for chunk in chunks:
                received += len(chunk)
                if received > cap:
                    raise ArchiveTooLarge(
                        f"size_gb: the archive is over {format_size(cap)}, more than a "
                        f"{size_gb} GB volume can hold"
                    )
                f.write(chunk)
        if received == 0:
            raise InvalidArgument(
                "archive: the request body is empty (send the tar.gz as the body)",
                code="invalid_archive",
            )

    def _build_from_archive(self, record: VolumeRecord, upload: Path) -> None:
        staging = self.volume_dir(record.id) / STAGING
        extract_archive(upload, staging, self.budget(record.size_gb))
        upload.unlink()
        try:
            create_ext4_disk(
                self.disk_path(record.id), record.size_gb * GB, field="size_gb",
                populate_from=staging,
            )  # fmt: skip
        except DiskFull as exc:
            raise ArchiveTooLarge(
                f"size_gb: the content does not fit in a {record.size_gb} GB volume"
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def budget(self, size_gb: int) -> Budget:
        """Free data bytes and inodes of an empty volume of this size (measured once)."""
        if size_gb not in self._budgets:
            with tempfile.TemporaryDirectory(dir=self.root) as tmp:
                probe = Path(tmp) / "probe.raw"
                create_ext4_disk(probe, size_gb * GB, field="size_gb")
                self._budgets[size_gb] = _measure(probe, size_gb)
        return self._budgets[size_gb]

    # --- delete ----------------------------------------------------------------

    def delete(self, ref: str) -> None:
        record = self.get(ref)
        with self.store.transaction() as conn:
            users = self._instances_using(conn, record.id)
            if users:
                raise Conflict(
                    f"volume {record.name!r} is attached to instance(s) {', '.join(users)}; "
                    "detach it or delete them first",
                    code="volume_in_use",
                )
            current = self.repo.get(record.id)
            if current is not None and current.status == VolumeStatus.CREATING:
                raise InvalidState(f"volume {record.name!r} is still being created")
            conn.execute("DELETE FROM volumes WHERE id = ?", (record.id,))
        shutil.rmtree(self.volume_dir(record.id), ignore_errors=True)

    @staticmethod
    def _instances_using(conn: sqlite3.Connection, volume_id: str) -> list[str]:
        rows = conn.execute(
            "SELECT data FROM volume_attachments WHERE volume_id = ?", (volume_id,)
        ).fetchall()
        return [Attachment.model_validate_json(row["data"]).instance_name for row in rows]

    # --- attachments -----------------------------------------------------------

    def attach(
        self, volume_ref: str, instance_id: str, instance_name: str, mount_path: str, *,
        readonly: bool = False, overlay: bool = False, overlay_size: str | int | None = None,
    ) -> Attachment:  # fmt: skip
        """Record that ``instance_id`` mounts the volume; the rules are checked atomically.

        Read-write: no other attachment at all. Read-only (with or without an
        overlay): any number, but not beside a read-write one. One volume once
        per instance, one volume per mount path, at most MAX_ATTACHMENTS each.
        """
        validate_mount_path(mount_path)
        overlay_bytes = _overlay_bytes(readonly, overlay, overlay_size)
        with self.store.transaction() as conn:
            volume = self.get(volume_ref)
            if volume.status != VolumeStatus.READY:
                raise Conflict(f"volume {volume.name!r} is not ready ({volume.status})",
                               code="volume_not_ready")  # fmt: skip
            mine = self.attachments_of(instance_id)
            self._check_instance(volume, mine, mount_path)
            self._check_sharing(volume, self.attachments_of_volume(volume.id), readonly)
            attachment = Attachment(
                volume_id=volume.id, instance_id=instance_id, instance_name=instance_name,
                mount_path=mount_path, readonly=readonly, overlay=overlay,
                overlay_size_bytes=overlay_bytes,
            )  # fmt: skip
            conn.execute(
                "INSERT INTO volume_attachments (volume_id, instance_id, data) VALUES (?, ?, ?)",
                (volume.id, instance_id, attachment.model_dump_json()),
            )
        return attachment

    @staticmethod
    def _check_instance(volume: VolumeRecord, mine: list[Attachment], mount_path: str) -> None:
        if any(a.volume_id == volume.id for a in mine):
            raise Conflict(f"volume {volume.name!r} is already attached to this instance",
                           code="already_attached")  # fmt: skip
        if any(a.mount_path == mount_path for a in mine):
            raise InvalidArgument(
                f"mount_path: {mount_path!r} is already used by another volume of this instance"
            )
        if len(mine) >= MAX_ATTACHMENTS:
            raise InvalidArgument(f"volumes: at most {MAX_ATTACHMENTS} volumes per instance")

    @staticmethod
    def _check_sharing(volume: VolumeRecord, others: list[Attachment], readonly: bool) -> None:
        writers = [a.instance_name for a in others if not a.readonly]
        if writers:
            raise Conflict(
                f"volume {volume.name!r} is attached read-write to instance {writers[0]!r}; "
                "a read-write volume belongs to one instance at a time",
                code="volume_in_use",
            )
        if not readonly and others:
            names = ", ".join(a.instance_name for a in others)
            raise Conflict(
                f"volume {volume.name!r} is attached read-only to {names}; it can be attached "
                "read-write only when no other instance uses it",
                code="volume_in_use",
            )

    def detach(self, volume_ref: str, instance_id: str) -> None:
        volume = self.get(volume_ref)
        with self.store.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM volume_attachments WHERE volume_id = ? AND instance_id = ?",
                (volume.id, instance_id),
            )
        if cur.rowcount == 0:
            raise NotFound(f"volume {volume.name!r} is not attached to instance {instance_id!r}")

    def attached_instance_ids(self) -> set[str]:
        """Every instance that has an attachment (to release those of deleted instances)."""
        rows = self.store.query("SELECT DISTINCT instance_id FROM volume_attachments")
        return {row["instance_id"] for row in rows}

    def release_instance(self, instance_id: str) -> None:
        """Drop every attachment of a deleted instance (idempotent)."""
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM volume_attachments WHERE instance_id = ?", (instance_id,))

    # --- what an instance boots with -----------------------------------------------

    def plan_disks(self, attachments: list[Attachment], instance_dir: Path) -> list[DiskSpec]:
        """Extra ``VMSpec.disks`` for these attachments (volume disks and overlay disks)."""
        paths = {a.volume_id: self.disk_path(a.volume_id) for a in attachments}
        return plan_disks(attachments, instance_dir, paths)

    def slot_table(self, attachments: list[Attachment], instance_dir: Path) -> SlotTable:
        """The volume slots of a boot with these attachments (see slots.py)."""
        paths = {a.volume_id: self.disk_path(a.volume_id) for a in attachments}
        return fresh_table(attachments, instance_dir, paths)

    @staticmethod
    def guest_mounts(attachments: list[Attachment]) -> list[GuestVolume]:
        """``GuestConfig.volumes`` for these attachments (same order as ``plan_disks``)."""
        return guest_mounts(attachments)

    @staticmethod
    def prepare_overlay_disks(attachments: list[Attachment], instance_dir: Path) -> None:
        """Create each overlay attachment's private upper disk if it does not exist yet,
        and the empty files of the volume slots."""
        create_empty_slots(instance_dir)
        for attachment in attachments:
            path = overlay_disk_path(instance_dir, attachment)
            if attachment.overlay and not path.exists():
                create_overlay_disk(path, attachment.overlay_size_bytes or MIN_OVERLAY_BYTES)

    # --- restart ---------------------------------------------------------------

    def recover(self) -> None:
        """Remove what a crash mid-create left: ``creating`` records and stray directories."""
        known: set[str] = set()
        for record in self.repo.all():
            if record.status == VolumeStatus.CREATING:
                log.warning("removing volume %s (%s): its creation never finished",
                            record.name, record.id)  # fmt: skip
                self._discard(record)
            else:
                known.add(record.id)
                for leftover in (UPLOAD, STAGING, DISK + ".tmp"):
                    path = self.volume_dir(record.id) / leftover
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(
                        missing_ok=True
                    )
        for entry in self.root.iterdir():
            if entry.name not in known:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()


def _overlay_bytes(readonly: bool, overlay: bool, overlay_size: str | int | None) -> int | None:
    if not overlay:
        if overlay_size is not None:
            raise InvalidArgument("overlay_size: only applies with overlay: true")
        return None
    if not readonly:
        raise InvalidArgument("overlay: requires readonly: true (the overlay takes the writes)")
    if overlay_size is None or overlay_size == "":
        raise InvalidArgument('overlay_size: required with overlay: true (e.g. "1GB")')
    size = parse_size(overlay_size, field="overlay_size")
    if size < MIN_OVERLAY_BYTES:
        raise InvalidArgument(
            f"overlay_size: at least {format_size(MIN_OVERLAY_BYTES)} (got {format_size(size)})"
        )
    return size


def _measure(disk: Path, size_gb: int) -> Budget:
    proc = subprocess.run(["dumpe2fs", "-h", str(disk)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Unavailable(f"dumpe2fs failed: {proc.stderr.strip()}")
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in proc.stdout.splitlines())
    )
    block = int(fields["Block size"])
    return Budget(
        bytes=int(fields["Free blocks"]) * block,
        inodes=int(fields["Free inodes"]),
        size_gb=size_gb,
    )
