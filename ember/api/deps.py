"""FastAPI dependencies: the running services and the auth check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from ember.api.auth import bearer_token, verify_token
from ember.api.services import Services


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


def require_auth(
    svc: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    if svc.settings.auth_disabled:
        return
    verify_token(svc.jwt_secret, bearer_token(authorization))
