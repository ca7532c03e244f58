"""The stored instance record."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from ember.guest.config import GuestConfig
from ember.images.models import utcnow
from ember.instances.state import State
from ember.snapshots.compression import CompressionConfig
from ember.store import StoredRecord

CompressionState = Literal["none", "compressing", "compressed", "error"]


class SnapshotPolicy(BaseModel):
    """Hypeman's `snapshot_policy`: how this instance's snapshots are compressed."""

    compression: CompressionConfig | None = None
    standby_compression_delay: str | None = None  # Go duration


class StandbySnapshot(BaseModel):
    """The saved VM of an instance in Standby (files under its layout's `standby`)."""

    created_at: datetime = Field(default_factory=utcnow)
    # Guest RAM stayed in the instance's memory file (x-ignore-shared); otherwise it is in
    # the migration stream with the device state.
    memory_in_file: bool
    state_bytes: int
    memory_bytes: int  # the memory payload as allocated on disk, uncompressed
    kernel: str  # what the VM was booted with: the restore starts the same
    initrd: str
    cmdline: str
    compression: CompressionConfig | None = None
    compression_state: CompressionState = "none"
    compressed_bytes: int | None = None
    compression_error: str | None = None


class InstanceRecord(StoredRecord):
    image: str  # normalized image reference
    image_digest: str
    state: State = State.CREATED
    state_error: str | None = None
    hypervisor: str = "qemu"
    vcpus: int = 1
    memory_bytes: int
    overlay_bytes: int
    hotplug_bytes: int = 0
    disk_io_bps: int | None = None
    # What the user asked for; None means "the image's".
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    skip_guest_agent: bool = False
    # The image's own config (entrypoint, cmd, env, working dir, user) at create, so the
    # instance keeps it when the tag moves (None: made before this was kept).
    image_config: GuestConfig | None = None
    platform: str | None = None  # the image's, e.g. "linux/amd64"
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    exit_code: int | None = None
    exit_message: str | None = None
    # The VMM process of the current boot; kept so a restarted server can re-adopt it.
    pid: int | None = None
    # Set while the instance is in Standby: what a restore starts from.
    standby: StandbySnapshot | None = None
    snapshot_policy: SnapshotPolicy | None = None
