"""`/v1/certificates`: uploaded PEM chains and keys, validated and served by the ingress'
Caddy (`IngressManager.add_certificate`), for the domains their leaf names."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ember.api.deps import ServicesDep
from ember.api.services import Services
from ember.errors import EmberError, InvalidArgument
from ember.ids import new_id
from ember.ingress.certificates import CertificateRecord, covers
from ember.ukc import convert
from ember.ukc import requests as req
from ember.ukc.batch import get_route, item_routes
from ember.ukc.envelope import Timer, envelope, item_error, named
from ember.ukc.listing import listing

JSON = dict[str, Any]
KEY = "certificates"
router = APIRouter(prefix="/v1/certificates", tags=["v1"])


def show(svc: Services, record: CertificateRecord) -> JSON:
    """Valid: it was checked at upload; `service_groups` are those whose domains it serves."""
    groups = [
        g for g in svc.groups.find() if any(covers(record.domains, d.name) for d in g.domains)
    ]
    return {
        "uuid": record.id, "name": record.name, "created_at": convert.iso(record.created_at),
        "common_name": record.common_name, "subject": record.subject, "issuer": record.issuer,
        "serial_number": record.serial_number, "not_before": convert.iso(record.not_before),
        "not_after": convert.iso(record.not_after), "state": "valid",
        "service_groups": [{"uuid": g.id, "name": g.name} for g in groups],
    }  # fmt: skip


def _get(svc: Services, ref: JSON) -> CertificateRecord:
    return convert.pick(ref, svc.ingresses.certificates.resolve, "certificate")


def _pem(item: JSON) -> tuple[str, str]:
    chain, key = item.get("chain"), item.get("pkey")
    if not isinstance(chain, str) or not isinstance(key, str):
        raise InvalidArgument("chain and pkey (PEM strings) are required")
    return chain, key


@router.post("", summary="Upload a certificate (PEM chain and key)")
async def create(request: Request, svc: ServicesDep) -> JSONResponse:
    timer, body = Timer(), await req.body_object(request)
    try:
        chain, key = _pem(body)
        name = body.get("name") or f"c-{new_id()[:8]}"
        record = await svc.ingresses.add_certificate(name, chain, key)
        item = {"status": "success", **show(svc, record)}
    except EmberError as exc:
        item = item_error(exc, named(body))
    return envelope(KEY, [item], timer)


@router.get("", summary="List certificates")
async def list_certificates(request: Request, svc: ServicesDep) -> JSONResponse:
    timer, certificates = Timer(), svc.ingresses.certificates
    items = listing(request, certificates.all(), certificates.resolve,
                    lambda c: show(svc, c), "certificate")  # fmt: skip
    return envelope(KEY, items, timer)


async def _replace(svc: Services, item: JSON) -> JSON:
    record = _get(svc, item)
    chain, key = _pem(item)
    return show(svc, await svc.ingresses.replace_certificate(record.id, chain, key))


async def _delete(svc: Services, ref: JSON) -> JSON:
    record = await svc.ingresses.delete_certificate(_get(svc, ref).id)
    return {"uuid": record.id, "name": record.name}


item_routes(router, KEY, "PUT", "", _replace, "Replace certificates' chains and keys")
item_routes(router, KEY, "DELETE", "", _delete, "Delete certificates")


get_route(router, KEY, lambda svc, ref: show(svc, _get(svc, ref)), "Get a certificate by uuid")
