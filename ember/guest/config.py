"""Per-instance config disk: what the guest runs, and where it records its exit.

Layout of the raw disk (attached read-write with virtio serial ``ember-config``):

- bytes 0..4095: exit record, written by the guest (JSON, NUL padded; all zero
  while the workload has not exited);
- from byte 4096: the config as ``key=value\\0`` records (see ``to_record``),
  NUL padded to a 4 KiB multiple.

A raw record rather than a filesystem: the busybox init reads it with ``dd`` and
the C agent with one ``pread``, with no parser beyond splitting on NUL.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ember.errors import InvalidArgument, Unavailable
from ember.guest.protocol import encode_record
from ember.units import format_size
from ember.validation import validate_env

EXIT_RECORD_SIZE = 4096
CONFIG_OFFSET = 4096
MAX_CONFIG_SIZE = 1 << 20  # the agent reads at most this much
MIN_OVERLAY_BYTES = 64 << 20  # room for ext4's own metadata and a journal
_BLOCK = 4096
GUEST_CERTS = "/etc/ssl/certs"  # where init installs `ca_certificates` (guest/init)


class GuestNetwork(BaseModel):
    model_config = ConfigDict(frozen=True)

    ip: str
    prefix: int = Field(ge=0, le=32)
    gateway: str | None = None
    dns: list[str] = Field(default_factory=list)
    mac: str | None = None  # applied by the hypervisor's NIC, recorded for completeness

    @field_validator("ip", "gateway")
    @classmethod
    def _ipv4(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.IPv4Address(value)
        return value


class GuestVolume(BaseModel):
    """One volume disk for init to mount before the workload starts.

    Sent as a ``vol=<serial> <rw|ro|ov> <overlay serial or -> <mount path>``
    record: the path comes last so init's ``read`` keeps any spaces in it.
    """

    model_config = ConfigDict(frozen=True)

    serial: str  # the volume's disk: ember-vol-N
    mount_path: str
    readonly: bool = False
    overlay: bool = False  # lower = the volume (read-only), upper = overlay_serial's disk
    overlay_serial: str | None = None  # ember-volov-N, required when overlay is set

    @property
    def record(self) -> str:
        if any(c.isspace() for c in self.serial) or any(ord(c) < 32 for c in self.mount_path):
            raise ValueError(f"volume {self.mount_path!r}: a space in its serial or a control "
                             "character in its path")  # fmt: skip
        if self.overlay:
            if not self.overlay_serial:
                raise ValueError(f"volume {self.mount_path!r}: overlay needs an overlay_serial")
            return f"{self.serial} ov {self.overlay_serial} {self.mount_path}"
        return f"{self.serial} {'ro' if self.readonly else 'rw'} - {self.mount_path}"


class GuestConfig(BaseModel):
    """What `docker run` would need: the image config merged with the request."""

    model_config = ConfigDict(frozen=True)

    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str = "/"
    user: str = ""  # "", "uid[:gid]" or "name[:group]"
    hostname: str = "ember"
    network: GuestNetwork | None = None
    volumes: list[GuestVolume] = Field(default_factory=list)  # mounted in this order
    # PEM added to the guest's trust store at boot (the egress proxy's CA): one "ca="
    # record per line, which init writes to GUEST_CERTS.
    ca_certificates: str | None = None

    @property
    def argv(self) -> list[str]:
        return [*self.entrypoint, *self.cmd]

    def to_record(self) -> bytes:
        fields: dict[str, str | list[str]] = {
            "arg": self.argv,
            "env": [f"{k}={v}" for k, v in self.env.items()],
            "cwd": self.working_dir or "/",
            "user": self.user,
            "hostname": self.hostname,
        }
        if self.network is not None:
            net = self.network
            fields |= {"net.ip": net.ip, "net.prefix": str(net.prefix), "net.dns": net.dns}
            if net.gateway:
                fields["net.gateway"] = net.gateway
        if self.ca_certificates:
            fields["ca"] = self.ca_certificates.strip().splitlines()
        validate_env(self.env)
        try:
            if self.volumes:
                fields["vol"] = [volume.record for volume in self.volumes]
            return encode_record(fields)
        except ValueError as exc:
            raise InvalidArgument(f"invalid guest config: {exc}") from exc


class ExitRecord(BaseModel):
    exit_code: int
    signal: int = 0
    message: str


def write_config_disk(path: Path, config: GuestConfig) -> None:
    """Create (or replace) the config disk; this also clears any old exit record."""
    record = config.to_record()
    if len(record) > MAX_CONFIG_SIZE:
        raise InvalidArgument(f"guest config is {len(record)} bytes; the limit is 1 MiB")
    padded = record + b"\0" * (-len(record) % _BLOCK)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"\0" * EXIT_RECORD_SIZE + padded + b"\0" * _BLOCK)
    os.replace(tmp, path)


def read_exit_record(path: Path) -> ExitRecord | None:
    """The guest's exit record, or None if the workload has not exited (or never ran)."""
    with path.open("rb") as f:
        raw = f.read(EXIT_RECORD_SIZE).rstrip(b"\0")
    if not raw:
        return None
    try:
        return ExitRecord.model_validate(json.loads(raw))
    except ValueError:
        return None


def create_overlay_disk(path: Path, size_bytes: int) -> None:
    """A sparse ext4 disk for the overlay's upper layer (serial ``ember-overlay``).

    It costs host disk only for what the guest writes. Journaled, because a
    forced stop (QMP quit, SIGKILL) gives the guest no chance to sync; lazy
    inode-table and journal init keep creation instant at any size.
    """
    create_ext4_disk(path, max(size_bytes, MIN_OVERLAY_BYTES), field="overlay_size")


def create_ext4_disk(
    path: Path, size_bytes: int, *, field: str, populate_from: Path | None = None
) -> None:
    """A sparse ext4 disk of ``size_bytes`` at ``path``, written under a temporary name.

    Shared by overlay disks and volumes. ``populate_from`` fills it with a
    directory tree (``mkfs.ext4 -d``: contents, modes, owners, symlinks and hard
    links copied in one pass, no mount needed). ``field`` names the request
    field in the error when the host filesystem cannot hold a file that large.
    A ``mkfs.ext4 -d`` that runs out of room raises ``DiskFull``.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            f.truncate(size_bytes)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EINVAL):
            raise InvalidArgument(
                f"{field}: {format_size(size_bytes)} is more than the host filesystem can hold "
                f"as a single disk file ({os.strerror(exc.errno)}); ask for a smaller "
                f"{'overlay' if field == 'overlay_size' else 'size'}"
            ) from exc
        raise
    populate = ["-d", str(populate_from)] if populate_from is not None else []
    proc = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0",
         "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", *populate, str(tmp)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        err = proc.stderr.strip()
        full = ("could not allocate", "no space", "not enough space")
        if populate_from is not None and any(text in err.lower() for text in full):
            raise DiskFull(f"{field}: the content does not fit in {format_size(size_bytes)}")
        raise Unavailable(f"mkfs.ext4 failed: {err}")
    os.replace(tmp, path)


class DiskFull(InvalidArgument):
    """The tree given to ``create_ext4_disk`` does not fit in the disk's size."""

    code = "disk_full"
