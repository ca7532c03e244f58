"""Ingress answers, built from the stored rules field by field."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from ember.api.schemas.base import Omitted, name_field
from ember.ingress import models


class IngressMatch(BaseModel):
    hostname: str
    port: Omitted[int] = None

    @classmethod
    def of(cls, m: models.IngressMatch) -> IngressMatch:
        return cls(hostname=m.hostname, port=m.port)


class IngressTarget(BaseModel):
    instance: str
    port: int

    @classmethod
    def of(cls, t: models.IngressTarget) -> IngressTarget:
        return cls(instance=t.instance, port=t.port)


class RequestHeaderAuth(BaseModel):
    header: str
    value: str

    @classmethod
    def of(cls, a: models.RequestHeaderAuth) -> RequestHeaderAuth:
        return cls(header=a.header, value=a.value)


class IngressRule(BaseModel):
    match: IngressMatch
    target: IngressTarget
    tls: bool
    redirect_http: bool
    request_header_auth: Omitted[RequestHeaderAuth] = None

    @classmethod
    def of(cls, r: models.IngressRule) -> IngressRule:
        auth = r.request_header_auth
        return cls(
            match=IngressMatch.of(r.match),
            target=IngressTarget.of(r.target),
            tls=r.tls,
            redirect_http=r.redirect_http,
            request_header_auth=RequestHeaderAuth.of(auth) if auth else None,
        )


class Ingress(BaseModel):
    id: str = Field(description="Auto-generated unique identifier")
    name: str
    rules: list[IngressRule]
    created_at: datetime
    tags: dict[str, str]

    @classmethod
    def of(cls, r: models.IngressRecord) -> Ingress:
        return cls(
            id=r.id,
            name=r.name,
            rules=[IngressRule.of(rule) for rule in r.rules],
            created_at=r.created_at,
            tags=r.tags,
        )


class CreateIngressRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = name_field("Lowercase letters, digits and dashes; cannot start or end with a dash")
    rules: list[models.IngressRule] = Field(
        description="Routing rules. `match.port` is the host port (default 80, or 443 with "
        "tls); `match.hostname` is literal or a pattern like `{instance}.example.com` whose "
        "captures `target.instance` may reference"
    )
    tags: dict[str, str] | None = None
