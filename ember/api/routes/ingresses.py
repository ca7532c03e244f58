"""`/ingresses`: HTTP(S) routes from host ports to instances, and the TLS CA certificate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from ember.api.deps import ServicesDep
from ember.api.errors import error_responses
from ember.api.query import tag_filter
from ember.api.schemas.ingresses import CreateIngressRequest, Ingress

# Bad input (400), an ingress that is not there (404), a name or host port taken (409).
router = APIRouter(
    prefix="/ingresses", tags=["ingresses"], responses=error_responses(400, 404, 409)
)
IngressRef = Annotated[str, Path(description="Ingress id, name or unique id prefix")]


@router.post("", status_code=201, response_model=Ingress, summary="Create an ingress")
async def create_ingress(body: CreateIngressRequest, svc: ServicesDep) -> Ingress:
    return Ingress.of(await svc.ingresses.create(body.name, body.rules, body.tags))


@router.get("", response_model=list[Ingress], summary="List ingresses")
async def list_ingresses(request: Request, svc: ServicesDep) -> list[Ingress]:
    return [Ingress.of(record) for record in svc.ingresses.find(tag_filter(request))]


# Declared before `/{id}`: ingress names cannot contain a dot, so no ingress hides it.
@router.get(
    "/ca.pem",
    summary="Root certificate of the ingress CA (Ember extension)",
    response_class=Response,
    responses={200: {"content": {"application/x-pem-file": {}}}},
)
async def ingress_ca(svc: ServicesDep) -> Response:
    """The PEM root that signs TLS ingress certificates when ACME is not configured."""
    return Response(svc.ingresses.ca_certificate(), media_type="application/x-pem-file")


@router.get("/{id}", response_model=Ingress, summary="Get an ingress")
async def get_ingress(id: IngressRef, svc: ServicesDep) -> Ingress:
    return Ingress.of(svc.ingresses.get(id))


@router.delete("/{id}", status_code=204, summary="Delete an ingress")
async def delete_ingress(id: IngressRef, svc: ServicesDep) -> Response:
    await svc.ingresses.delete(id)
    return Response(status_code=204)
