"""`/resources` and `/capabilities` answers, from the capacity figures and the backends."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ember.api.schemas.base import Omitted
from ember.instances.capacity import Allocation, Status, Usage


class ResourceStatus(BaseModel):
    type: str
    capacity: int
    oversub_ratio: float
    effective_limit: int
    allocated: int
    available: int
    source: Omitted[str] = None

    @classmethod
    def of(cls, s: Status) -> ResourceStatus:
        return cls(
            type=s.type,
            capacity=s.capacity,
            oversub_ratio=s.oversub_ratio,
            effective_limit=s.effective_limit,
            allocated=s.allocated,
            available=s.available,
            source=s.source,
        )


class ResourceAllocation(BaseModel):
    instance_id: str
    instance_name: str
    cpu: Omitted[int] = None
    memory_bytes: Omitted[int] = None
    disk_bytes: Omitted[int] = None
    disk_io_bps: Omitted[int] = None
    network_download_bps: Omitted[int] = None
    network_upload_bps: Omitted[int] = None

    @classmethod
    def of(cls, a: Allocation) -> ResourceAllocation:
        return cls(
            instance_id=a.instance_id,
            instance_name=a.instance_name,
            cpu=a.cpu,
            memory_bytes=a.memory_bytes,
            disk_bytes=a.disk_bytes,
            disk_io_bps=a.disk_io_bps,
            network_download_bps=a.network_download_bps,
            network_upload_bps=a.network_upload_bps,
        )


class Resources(BaseModel):
    cpu: ResourceStatus
    memory: ResourceStatus
    disk: ResourceStatus
    disk_io: ResourceStatus
    network: ResourceStatus
    allocations: list[ResourceAllocation]

    @classmethod
    def of(cls, u: Usage) -> Resources:
        return cls(
            cpu=ResourceStatus.of(u.cpu),
            memory=ResourceStatus.of(u.memory),
            disk=ResourceStatus.of(u.disk),
            disk_io=ResourceStatus.of(u.disk_io),
            network=ResourceStatus.of(u.network),
            allocations=[ResourceAllocation.of(a) for a in u.allocations],
        )


class _Open(BaseModel):
    """Hypeman's fields, plus Ember's own details (the official client ignores extras)."""

    model_config = ConfigDict(extra="allow")


class Runtime(_Open):
    name: str
    available: bool
    features: list[str]


class DefaultRuntime(BaseModel):
    name: str
    available: bool


class Host(BaseModel):
    os: str
    arch: str


class ImagesInfo(BaseModel):
    default_platform: str
    platforms: list[str]


class NetworkInfo(_Open):
    model: Literal["bridge", "nat"]
    guest_to_guest: bool
    gateway: Omitted[str] = None
    subnet: Omitted[str] = None


class Server(BaseModel):
    version: str
    api_version: str


class Capabilities(BaseModel):
    default_runtime: DefaultRuntime
    features: list[str]
    host: Host
    images: ImagesInfo
    network: NetworkInfo
    runtimes: list[Runtime]
    server: Server
