"""Where volumes go in the guest: mount path rules, and the disks and mounts of an instance."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from pathlib import Path

from ember.errors import InvalidArgument
from ember.guest.config import GuestVolume
from ember.hypervisor import DiskSpec
from ember.volumes.models import Attachment

# Paths init and the agent mount themselves: a volume over (or under) them would
# hide or be hidden by them.
RESERVED = ("/proc", "/sys", "/dev", "/.ember")
MAX_PATH = 4096
VOLUME_SERIAL = "ember-vol-{}"
OVERLAY_SERIAL = "ember-volov-{}"


def validate_mount_path(path: str, *, field: str = "mount_path") -> str:
    """An absolute, normalised path that hides nothing Ember mounts itself."""
    if not path.startswith("/"):
        raise InvalidArgument(f"{field}: {path!r} must be an absolute path")
    if any(ord(c) < 32 or c == "\x7f" for c in path) or len(path) > MAX_PATH:
        raise InvalidArgument(f"{field}: {path!r} contains control characters or is too long")
    if ".." in path.split("/"):
        raise InvalidArgument(f"{field}: {path!r} must not contain '..'")
    if posixpath.normpath(path) != path or path.startswith("//"):
        raise InvalidArgument(
            f"{field}: {path!r} is not normalised (write {posixpath.normpath(path)!r})"
        )
    if path == "/":
        raise InvalidArgument(f"{field}: a volume cannot be mounted over the root '/'")
    for reserved in RESERVED:
        if path == reserved or path.startswith(reserved + "/"):
            raise InvalidArgument(
                f"{field}: {path!r} is under {reserved}, which Ember mounts itself"
            )
    return path


def ordered(attachments: Iterable[Attachment]) -> list[Attachment]:
    """Mount order: parents before children (a volume at /data/cache needs /data first).

    Serial numbers follow this order, so ``plan_disks`` and ``guest_mounts``
    agree for the same attachments.
    """
    return sorted(attachments, key=lambda a: (a.mount_path.split("/"), a.volume_id))


def overlay_disk_path(instance_dir: Path, attachment: Attachment) -> Path:
    """The instance's private upper layer for an ``overlay`` attachment (keyed by volume)."""
    return instance_dir / f"volume-overlay-{attachment.volume_id}.ext4"


def plan_disks(
    attachments: Iterable[Attachment], instance_dir: Path, volume_disk: dict[str, Path]
) -> list[DiskSpec]:
    """The extra disks an instance boots with: each volume, then its overlay disk if any.

    ``volume_disk`` maps volume id to its disk file (``VolumeManager.disk_path``).
    A read-only or overlay attachment opens the volume read-only in QEMU too, so
    the guest cannot write it even by going around the mount options.
    """
    disks: list[DiskSpec] = []
    for index, attachment in enumerate(ordered(attachments)):
        disks.append(
            DiskSpec(
                volume_disk[attachment.volume_id],
                VOLUME_SERIAL.format(index),
                readonly=attachment.readonly or attachment.overlay,
                swappable=True,
            )
        )
        if attachment.overlay:
            disks.append(
                DiskSpec(overlay_disk_path(instance_dir, attachment), OVERLAY_SERIAL.format(index))
            )
    return disks


def guest_mounts(attachments: Iterable[Attachment]) -> list[GuestVolume]:
    """The ``GuestConfig.volumes`` entries matching ``plan_disks`` for the same attachments."""
    return [
        GuestVolume(
            serial=VOLUME_SERIAL.format(index),
            mount_path=attachment.mount_path,
            readonly=attachment.readonly or attachment.overlay,
            overlay=attachment.overlay,
            overlay_serial=OVERLAY_SERIAL.format(index) if attachment.overlay else None,
        )
        for index, attachment in enumerate(ordered(attachments))
    ]
