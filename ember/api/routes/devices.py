"""`/devices`: PCI devices for passthrough, as this host has them (`ember/devices`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.schemas.devices import AvailableDevice, CreateDeviceRequest, Device
from ember.api.services import Services
from ember.devices import DeviceRecord

router = APIRouter(prefix="/devices", tags=["devices"], responses=error_responses(400))
DeviceRef = Annotated[str, Path(alias="id", description="Device id or name")]


def _answer(svc: Services, record: DeviceRecord) -> Device:
    return Device.of(record, svc.devices.host_device(record))


@router.get("", response_model=list[Device], summary="List registered devices")
async def list_devices(svc: ServicesDep) -> list[Device]:
    return [_answer(svc, record) for record in svc.devices.find()]


# Declared before `/{id}`.
@router.get(
    "/available",
    response_model=list[AvailableDevice],
    summary="Passthrough-capable PCI devices of this host (in an IOMMU group) not registered",
)
async def list_available(svc: ServicesDep) -> list[AvailableDevice]:
    return [AvailableDevice.of(device) for device in svc.devices.available()]


@router.post(
    "",
    status_code=201,
    response_model=Device,
    summary="Register a device for passthrough",
    responses=error_responses(404, 409),
)
async def create_device(body: CreateDeviceRequest, svc: ServicesDep) -> Device:
    """404: the host has no device at that address; 409: it is in no IOMMU group (the
    message says why), or it or the name is registered already."""
    return _answer(svc, svc.devices.create(body.pci_address, body.name, body.tags))


@router.get("/{id}", response_model=Device, summary="Get a device", responses=error_responses(404))
async def get_device(ref: DeviceRef, svc: ServicesDep) -> Device:
    return _answer(svc, svc.devices.get(ref))


@router.delete(
    "/{id}", status_code=204, summary="Unregister a device", responses=error_responses(404)
)
async def delete_device(ref: DeviceRef, svc: ServicesDep) -> Response:
    svc.devices.delete(ref)
    return Response(status_code=204)
