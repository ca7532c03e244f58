"""`/v1/users/quotas` from the admission limits Ember enforces (`GET /resources`'s
figures), `/v1/images` (the images this server holds) and `/v1/healthz`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ember import __version__
from ember.api.deps import ServicesDep
from ember.api.services import Services
from ember.images.models import ImageStatus
from ember.instances.state import ACTIVE
from ember.ukc.convert import MB, iso
from ember.ukc.envelope import Timer, envelope

JSON = dict[str, Any]
router = APIRouter(prefix="/v1", tags=["v1"])
USER = "ember"  # one account per server: every token is the same user


def quotas(svc: Services) -> JSON:
    """`hard` is what admission would still allow in total (CPU and memory, with the
    oversubscription ratios applied); `used` is what is allocated now."""
    usage = svc.instances.usage()
    records = svc.instances.find()
    live = [r for r in records if r.state in ACTIVE]
    groups = svc.groups.find()
    volumes = svc.volumes.find()
    return {
        "status": "success",
        "uuid": USER,
        "used": {
            "instances": len(records),
            "live_instances": len(live),
            "live_vcpus": usage.cpu.allocated,
            "live_memory_mb": usage.memory.allocated // MB,
            "service_groups": len(groups),
            "services": sum(len(g.services) for g in groups),
            "volumes": len(volumes),
            "total_volume_mb": sum(v.size_gb for v in volumes) * 1024,
        },
        "hard": {
            "live_vcpus": usage.cpu.effective_limit,
            "live_memory_mb": usage.memory.effective_limit // MB,
            "total_volume_mb": usage.disk.capacity // MB,
        },
        "limits": {
            "min_vcpus": 1,
            "max_vcpus": usage.cpu.capacity,
            "min_memory_mb": 1,
            "max_memory_mb": usage.memory.effective_limit // MB,
            "min_volume_mb": 1024,
            "max_volume_mb": usage.disk.available // MB,
        },
    }


@router.get("/users/quotas", summary="Quotas: Ember's admission limits and usage")
async def get_quotas(svc: ServicesDep) -> JSONResponse:
    timer = Timer()
    return envelope("quotas", [quotas(svc)], timer)


@router.get("/images", summary="Images ready on this server (filters: `tag`, `digest`)")
async def images(request: Request, svc: ServicesDep) -> JSONResponse:
    timer, params = Timer(), request.query_params
    tag, digest = params.get("tag"), params.get("digest")
    items = [
        {
            "status": "success", "url": f"{image.name}@{image.digest}",
            "created_at": iso(image.created_at), "size_in_bytes": image.size_bytes,
            "args": image.cmd or [], "env": image.env or {}, "tags": [image.name],
        }
        for image in svc.images.find()
        if image.status == ImageStatus.READY
        and (tag is None or image.name == tag) and (digest is None or image.digest == digest)
    ]  # fmt: skip
    return envelope("images", items, timer)


@router.get("/healthz", summary="Health (Unikraft Cloud; behind the token, as all of Ember)")
async def healthz() -> JSONResponse:
    body = {"status": "success", "data": {"checks": {"api": "healthy"},
            "versions": {"ember": __version__}}, "op_time_us": 0}  # fmt: skip
    return JSONResponse(body)
