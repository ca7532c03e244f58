"""Ingress records and the validation of a create request (shapes of hypeman 0.28's types)."""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ember.errors import InvalidArgument
from ember.ingress.hostnames import Hostname, parse_hostname, parse_target
from ember.store import StoredRecord

DEFAULT_HTTP_PORT = 80
DEFAULT_HTTPS_PORT = 443
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
# Visible ASCII minus what Caddy's header matcher treats specially (`*` wildcards, `{}`
# placeholders) and quotes/backslashes: the value is matched literally, nothing else.
HEADER_VALUE_RE = re.compile(r"^[!#-&(-)+-\[\]-z|~]{32,256}$")
# Headers that carry credentials, routing or framing: gating on them would break clients
# or the proxy itself, and stripping them before proxying (as we do) would break the app.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Host", "Authorization", "Cookie", "Proxy-Authorization", "Proxy-Authenticate",
        "Proxy-Connection", "Content-Length", "Content-Type", "Connection", "Keep-Alive",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Forwarded", "Via",
        "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Sec-WebSocket-Key",
        "Sec-WebSocket-Version", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions",
    )
)  # fmt: skip


# A rule's fields are strict as an instance request's are: "8082" is not a port and
# "true" not a bool; an unknown field is refused by name, never ignored.
_STRICT = ConfigDict(extra="forbid")


class IngressMatch(BaseModel):
    model_config = _STRICT
    hostname: StrictStr
    port: StrictInt | None = Field(default=None, description="Host port to listen on (default 80)")


class IngressTarget(BaseModel):
    model_config = _STRICT
    instance: StrictStr
    port: StrictInt


class RequestHeaderAuth(BaseModel):
    model_config = _STRICT
    header: StrictStr
    value: StrictStr


class IngressRule(BaseModel):
    model_config = _STRICT
    match: IngressMatch
    target: IngressTarget
    tls: StrictBool = False
    redirect_http: StrictBool = False
    request_header_auth: RequestHeaderAuth | None = None

    @property
    def listen_port(self) -> int:
        """The port Caddy serves this rule on: explicit, else 443 with TLS, else 80."""
        if self.match.port is not None:
            return self.match.port
        return DEFAULT_HTTPS_PORT if self.tls else DEFAULT_HTTP_PORT

    @property
    def hostname(self) -> Hostname:
        return parse_hostname(self.match.hostname)


class IngressRecord(StoredRecord):
    created_at: datetime
    rules: list[IngressRule]
    tags: dict[str, str] = Field(default_factory=dict)


def validate_rules(rules: list[IngressRule]) -> list[IngressRule]:
    """Check each rule alone (shape, ports, captures, TLS constraints); 400 naming the field."""
    if not rules:
        raise InvalidArgument("rules: at least one rule is required")
    return [_validate_rule(rule, f"rules[{index}]") for index, rule in enumerate(rules)]


def _validate_rule(rule: IngressRule, field: str) -> IngressRule:
    hostname = parse_hostname(rule.match.hostname, field=f"{field}.match.hostname")
    _check_port(rule.match.port, f"{field}.match.port", optional=True)
    _check_port(rule.target.port, f"{field}.target.port", optional=False)
    parse_target(rule.target.instance, hostname, field=f"{field}.target.instance")
    if rule.redirect_http and not rule.tls:
        raise InvalidArgument(f"{field}.redirect_http: requires tls to be enabled")
    if rule.redirect_http and rule.listen_port == DEFAULT_HTTP_PORT:
        raise InvalidArgument(
            f"{field}.redirect_http: the rule itself listens on port {DEFAULT_HTTP_PORT}, "
            "where the redirect would be served"
        )
    if rule.tls and hostname.is_any:
        raise InvalidArgument(
            f"{field}.tls: no certificate covers any host; name the hostname to serve TLS"
        )
    if rule.tls and hostname.is_pattern and hostname.wildcard is None:
        raise InvalidArgument(
            f"{field}.tls: a TLS pattern hostname must have its captures in the first "
            f"label only (a wildcard certificate covers one label), got {hostname.text!r}"
        )
    if rule.request_header_auth is not None:
        _check_header_auth(rule.request_header_auth, f"{field}.request_header_auth")
    # Stored explicit: the answer shows the port really served, not a default to guess.
    match = IngressMatch(hostname=hostname.text, port=rule.listen_port)
    return rule.model_copy(update={"match": match})


def _check_port(port: int | None, field: str, *, optional: bool) -> None:
    if port is None and optional:
        return
    if port is None or not 1 <= port <= 65535:
        raise InvalidArgument(f"{field}: must be a port number from 1 to 65535, got {port}")


def _check_header_auth(auth: RequestHeaderAuth, field: str) -> None:
    if not HEADER_NAME_RE.fullmatch(auth.header):
        raise InvalidArgument(f"{field}.header: {auth.header!r} is not a valid header name")
    if auth.header.lower() in RESERVED_HEADERS or auth.header.lower().startswith("proxy-"):
        raise InvalidArgument(f"{field}.header: {auth.header!r} is reserved and cannot be used")
    # Never echo the value: it is a secret and may be half-typed into the wrong field.
    if not HEADER_VALUE_RE.fullmatch(auth.value):
        raise InvalidArgument(
            f"{field}.value: must be 32-256 characters of visible ASCII without "
            "spaces, quotes, backslashes, '*', '{' or '}'"
        )
