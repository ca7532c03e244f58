"""`/ingresses`: HTTP(S) routes from host ports to instances, and the TLS CA certificate."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ember.api.deps import ServicesDep
from ember.api.query import tag_filter
from ember.ingress.models import IngressRecord, IngressRule

router = APIRouter(prefix="/ingresses", tags=["ingresses"])
IngressRef = Annotated[str, Path(description="Ingress id, name or unique id prefix")]


class Ingress(BaseModel):
    id: str = Field(description="Auto-generated unique identifier")
    name: str
    rules: list[IngressRule]
    created_at: datetime
    tags: dict[str, str] | None = None

    @classmethod
    def of(cls, record: IngressRecord) -> Ingress:
        return cls(**record.model_dump())


class CreateIngressRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Lowercase letters, digits and dashes; cannot start or end with a dash"
    )
    rules: list[IngressRule] = Field(
        description="Routing rules. `match.port` is the host port (default 80, or 443 with "
        "tls); `match.hostname` is literal or a pattern like `{instance}.example.com` whose "
        "captures `target.instance` may reference"
    )
    tags: dict[str, str] | None = None


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
