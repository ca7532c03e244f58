"""The service-group domain: what is stored, in the seed's words (Unikraft Cloud's
`ServiceGroup`, `Service`, `scale_to_zero`, `autokill`), so a `/v1` surface maps onto
it field for field."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from ember.images.models import utcnow
from ember.store import StoredRecord

Handler = Literal["tls", "http", "redirect"]
ServiceProtocol = Literal["tcp", "udp"]
ScaleToZeroPolicy = Literal["off", "on", "idle"]
LIMIT_MAX = 65535


class Service(BaseModel):
    """One published port: `port` on the host, forwarded to `destination_port` of the
    group's instances."""

    port: int
    destination_port: int
    protocol: ServiceProtocol = "tcp"
    handlers: list[Handler] = Field(default_factory=list)

    @property
    def is_http(self) -> bool:
        return "http" in self.handlers

    @property
    def is_l4(self) -> bool:
        """UDP, or TCP without `http` (plain, or TLS-terminated): Ember's own listeners
        carry it (`l4.py`), not Caddy."""
        return self.protocol == "udp" or self.handlers in ([], ["tls"])

    @property
    def terminates_tls(self) -> bool:
        return self.is_l4 and self.handlers == ["tls"]


class Domain(BaseModel):
    name: str  # a hostname the group's HTTP services answer for


class Autokill(BaseModel):
    time_ms: int = 0  # the group is deleted this long after it became empty; 0: never


class ServiceGroupRecord(StoredRecord):
    created_at: datetime = Field(default_factory=utcnow)
    # False: made from an instance's create request, deleted when its last instance leaves.
    persistent: bool = True
    services: list[Service]
    domains: list[Domain] = Field(default_factory=list)
    soft_limit: int
    hard_limit: int
    autokill: Autokill | None = None
    empty_since: datetime | None = None  # when its last instance left (autokill)


class ScaleToZero(BaseModel):
    """Per instance: when it goes to sleep and how (standby when stateful, stop otherwise)."""

    policy: ScaleToZeroPolicy = "off"
    stateful: bool = True
    cooldown_time_ms: int = 1000
    notify_time_ms: int = 0

    @property
    def enabled(self) -> bool:
        return self.policy != "off"


class MemberRecord(StoredRecord):
    """An instance's place in a group (`id` and `name` are the instance's)."""

    group_id: str
    scale_to_zero: ScaleToZero | None = None
    joined_at: datetime = Field(default_factory=utcnow)


__all__ = [
    "LIMIT_MAX",
    "Autokill",
    "Domain",
    "Handler",
    "MemberRecord",
    "ScaleToZero",
    "ScaleToZeroPolicy",
    "Service",
    "ServiceGroupRecord",
    "ServiceProtocol",
]
