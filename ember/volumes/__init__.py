"""Volumes: persistent ext4 disks that outlive instances, attached at boot or, through
volume slots, to running VMs."""

from ember.volumes.manager import VolumeManager
from ember.volumes.models import Attachment, VolumeRecord, VolumeStatus
from ember.volumes.mounts import guest_mounts, plan_disks, validate_mount_path

__all__ = [
    "Attachment",
    "VolumeManager",
    "VolumeRecord",
    "VolumeStatus",
    "guest_mounts",
    "plan_disks",
    "validate_mount_path",
]
