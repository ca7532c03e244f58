"""What the API asks of groups, strictly typed, and its validation into the domain.

Every refusal is an `InvalidArgument` naming the field, with a code of its own
(`invalid_limit`, `soft_limit_above_hard_limit`, `invalid_port`, `duplicate_port`,
`invalid_handlers`, `invalid_domain`, `not_supported`, ...), raised before anything
is stored or started.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ember.errors import InvalidArgument
from ember.groups.models import (
    LIMIT_MAX,
    Autokill,
    Domain,
    Handler,
    ScaleToZero,
    ScaleToZeroPolicy,
    Service,
    ServiceGroupRecord,
    ServiceProtocol,
)
from ember.ids import new_id
from ember.ingress.hostnames import parse_hostname
from ember.validation import validate_name

# Unset limits: no soft limit (wake another instance only when one is full) and no
# practical hard limit, as the seed's maximum.
DEFAULT_HARD_LIMIT = LIMIT_MAX


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceRequest(_Strict):
    port: StrictInt = Field(description="Published port on the host (Caddy listens there)")
    destination_port: StrictInt | None = Field(
        default=None, description="Port the instances listen on (default: `port`)"
    )
    protocol: ServiceProtocol = "tcp"
    handlers: list[Handler] | None = Field(
        default=None,
        description='`["http"]` (default), `["tls", "http"]` (HTTPS), `["redirect"]` '
        '(a 308 to https), `[]` (plain TCP, carried by Ember\'s TCP proxy), `["tls"]` '
        "(TLS-terminated TCP: TLS ends at Ember's TCP proxy, plain TCP to the instance; "
        "needs a domain); UDP: `[]` (the default for UDP)",
    )


class DomainRequest(_Strict):
    name: StrictStr = Field(description="A hostname the group's HTTP services answer for")


class AutokillRequest(_Strict):
    time_ms: StrictInt = Field(
        default=0, description="Delete the group this long after it became empty; 0: never"
    )


class CreateServiceGroupRequest(_Strict):
    """Unikraft Cloud's `CreateServiceGroupRequest`."""

    name: StrictStr | None = Field(default=None, description="Generated when left out")
    services: list[ServiceRequest] = Field(description="Published ports")
    domains: list[DomainRequest] | None = Field(
        default=None, description="Hostnames; none: every hostname on the services' ports"
    )
    soft_limit: StrictInt | None = Field(
        default=None,
        description="In-flight requests per instance after which the next request wakes "
        "another standby instance (default: the hard limit)",
    )
    hard_limit: StrictInt | None = Field(
        default=None,
        description="Most concurrent requests one instance is ever given; beyond, requests "
        f"fail at once with 503 (default {DEFAULT_HARD_LIMIT})",
    )
    autokill: AutokillRequest | None = None


class InstanceServiceGroupRequest(_Strict):
    """On instance create/PATCH: an existing group by `name` or `uuid`, or the shape of a
    new ephemeral one (deleted with its last instance)."""

    name: StrictStr | None = None
    uuid: StrictStr | None = None
    services: list[ServiceRequest] | None = None
    domains: list[DomainRequest] | None = None
    soft_limit: StrictInt | None = None
    hard_limit: StrictInt | None = None

    @property
    def reference(self) -> str | None:
        return self.uuid or self.name


class ScaleToZeroRequest(_Strict):
    """Unikraft Cloud's `scale_to_zero` (needs a service group)."""

    policy: ScaleToZeroPolicy = "on"
    stateful: StrictBool = Field(
        default=True, description="Standby keeping RAM (true) or stop and boot again (false)"
    )
    cooldown_time_ms: StrictInt = Field(
        default=1000, description="Idle this long (no request, no connection) before sleeping"
    )
    notify_time_ms: StrictInt = Field(
        default=0,
        description="Tell the workload (SIGUSR1, through the guest agent) this long before "
        "it is scaled to zero; 0: no notice",
    )


def group_record(
    request: CreateServiceGroupRequest, *, persistent: bool = True
) -> ServiceGroupRecord:
    name = validate_name(request.name) if request.name is not None else f"group-{new_id()[:8]}"
    soft, hard = limits(request.soft_limit, request.hard_limit)
    autokill = None
    if request.autokill is not None:
        autokill = Autokill(time_ms=_non_negative(request.autokill.time_ms, "autokill.time_ms"))
    published, names = services(request.services), domains(request.domains or [])
    if not names and any(s.terminates_tls for s in published):
        raise InvalidArgument(
            'domains: a TLS-terminated TCP service (handlers ["tls"]) needs a domain: the '
            "certificate's name, served to clients that send no server name",
            code="invalid_domain",
        )
    return ServiceGroupRecord(
        id=new_id(),
        name=name,
        created_at=datetime.now(UTC),
        persistent=persistent,
        services=published,
        domains=names,
        soft_limit=soft,
        hard_limit=hard,
        autokill=autokill,
    )


def ephemeral_group(request: InstanceServiceGroupRequest, instance_name: str) -> ServiceGroupRecord:
    """The group an instance's create request describes instead of naming one."""
    if request.services is None:
        raise InvalidArgument(
            "service_group: give `name` or `uuid` of an existing group, or `services` "
            "for a new one",
            code="invalid_service_group",
        )
    shape = CreateServiceGroupRequest(
        name=instance_name,
        services=request.services,
        domains=request.domains,
        soft_limit=request.soft_limit,
        hard_limit=request.hard_limit,
    )
    return group_record(shape, persistent=False)


def check_reference(request: InstanceServiceGroupRequest) -> str | None:
    """The existing group a request names (None: it describes a new one)."""
    if request.name is not None and request.uuid is not None:
        raise InvalidArgument(
            "service_group: `name` and `uuid` are mutually exclusive", code="invalid_service_group"
        )
    reference = request.reference
    shaped = [
        f
        for f in ("services", "domains", "soft_limit", "hard_limit")
        if f in request.model_fields_set
    ]
    if reference is not None and shaped:
        raise InvalidArgument(
            f"service_group: {', '.join(shaped)} describe a new group and cannot go with a "
            "reference to an existing one",
            code="invalid_service_group",
        )
    return reference


def limits(soft: int | None, hard: int | None) -> tuple[int, int]:
    hard = DEFAULT_HARD_LIMIT if hard is None else _limit(hard, "hard_limit")
    soft = hard if soft is None else _limit(soft, "soft_limit")
    if soft > hard:
        raise InvalidArgument(
            f"soft_limit: {soft} is above hard_limit {hard}; soft_limit <= hard_limit",
            code="soft_limit_above_hard_limit",
        )
    return soft, hard


def services(requests: list[ServiceRequest]) -> list[Service]:
    if not requests:
        raise InvalidArgument("services: at least one service is needed", code="invalid_service")
    out: list[Service] = []
    for index, request in enumerate(requests):
        field = f"services[{index}]"
        port = _port(request.port, f"{field}.port")
        if any(s.port == port for s in out):
            raise InvalidArgument(
                f"{field}.port: port {port} is published twice", code="duplicate_port"
            )
        destination = port if request.destination_port is None else request.destination_port
        default: list[Handler] = ["http"] if request.protocol == "tcp" else []
        given = default if request.handlers is None else request.handlers
        handlers = _handlers(given, request.protocol, field)
        out.append(
            Service(
                port=port,
                destination_port=_port(destination, f"{field}.destination_port"),
                protocol=request.protocol,
                handlers=handlers,
            )
        )
    return out


def _handlers(handlers: list[Handler], protocol: ServiceProtocol, field: str) -> list[Handler]:
    chosen = set(handlers)
    if len(chosen) != len(handlers):
        raise InvalidArgument(
            f"{field}.handlers: a handler is listed twice", code="invalid_handlers"
        )
    if protocol == "udp" and chosen:
        raise InvalidArgument(
            f"{field}.handlers: a UDP service has no handler (handlers [])",
            code="invalid_handlers",
        )
    if not (chosen in (set(), {"tls"}) or "http" in chosen or chosen == {"redirect"}):
        raise InvalidArgument(
            f'{field}: this server balances HTTP (handlers ["http"], ["tls", "http"] or '
            '["redirect"]), TCP (handlers [] or ["tls"]) and UDP (handlers []); DTLS is '
            "not available",
            code="not_supported",
        )
    if "redirect" in chosen and chosen != {"redirect"}:
        raise InvalidArgument(
            f'{field}.handlers: "redirect" answers every request with a 308 to https and '
            "goes alone",
            code="invalid_handlers",
        )
    return sorted(chosen)


def domains(requests: list[DomainRequest]) -> list[Domain]:
    out: list[Domain] = []
    for index, request in enumerate(requests):
        field = f"domains[{index}].name"
        try:
            hostname = parse_hostname(request.name, field=field)
        except InvalidArgument as exc:
            raise InvalidArgument(exc.message, code="invalid_domain") from None
        if hostname.is_pattern:
            raise InvalidArgument(f"{field}: patterns are not domains", code="invalid_domain")
        if any(d.name == hostname.text for d in out):
            raise InvalidArgument(
                f"{field}: {hostname.text!r} is listed twice", code="invalid_domain"
            )
        out.append(Domain(name=hostname.text))
    return out


def scale_to_zero(request: ScaleToZeroRequest) -> ScaleToZero:
    cooldown = _non_negative(request.cooldown_time_ms, "scale_to_zero.cooldown_time_ms")
    notify = _non_negative(request.notify_time_ms, "scale_to_zero.notify_time_ms")
    return ScaleToZero(
        policy=request.policy,
        stateful=request.stateful,
        cooldown_time_ms=cooldown,
        notify_time_ms=notify,
    )


def _limit(value: int, field: str) -> int:
    if not 1 <= value <= LIMIT_MAX:
        raise InvalidArgument(f"{field}: {value} is outside 1-{LIMIT_MAX}", code="invalid_limit")
    return value


def _port(value: int, field: str) -> int:
    if not 1 <= value <= 65535:
        raise InvalidArgument(f"{field}: {value} is not a port (1-65535)", code="invalid_port")
    return value


def _non_negative(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{field}: must not be negative, got {value}", code="invalid_time")
    return value
