"""Credential brokering: Hypeman's `credentials` on create, validated into what the
host keeps (the real value) and what the guest gets (a placeholder).

The guest's env var (the map's key) holds a random placeholder, and the real
value's own env var (`source.env`) is not passed to the guest at all. The proxy
sets the rule's header, `format` with `${value}` replaced by the real value, on
each request to a matching host; other requests pass as the guest sent them.
"""

from __future__ import annotations

import re
import secrets

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ember.egress.policy import host_matches, validate_host_pattern
from ember.errors import InvalidArgument

VALUE = "${value}"
PLACEHOLDER_PREFIX = "ember-placeholder-"
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CredentialSource(_Strict):
    env: StrictStr = Field(description="Name of the real credential in the request `env`")


class CredentialInjectAs(_Strict):
    header: StrictStr = Field(description="Header set on matching outbound requests")
    format: StrictStr = Field(description="Template that must include `${value}`")


class CredentialInject(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    hosts: list[StrictStr] | None = Field(
        default=None, description="Host patterns (`api.example.com`, `*.example.com`); "
        "omitted: every destination"
    )  # fmt: skip
    as_: CredentialInjectAs = Field(alias="as")


class CredentialRequest(_Strict):
    """Hypeman's `CreateInstanceRequestCredential`."""

    source: CredentialSource
    inject: list[CredentialInject] = Field(min_length=1)


class InjectRule(BaseModel):
    model_config = ConfigDict(frozen=True)

    hosts: list[str] | None  # None: every destination
    header: str
    format: str

    def applies_to(self, host: str) -> bool:
        return self.hosts is None or any(host_matches(p, host) for p in self.hosts)


class Credential(BaseModel):
    """What the host keeps for one credential. `value` never leaves the host."""

    name: str  # the guest-visible env var
    source_env: str
    value: str
    placeholder: str
    inject: list[InjectRule]


def plan_credentials(
    requested: dict[str, CredentialRequest], env: dict[str, str]
) -> tuple[list[Credential], dict[str, str]]:
    """Validate `credentials` against the request's `env`; return what the host keeps
    and the env the guest gets (placeholders in, real values out)."""
    credentials: list[Credential] = []
    guest_env = dict(env)
    for name, request in requested.items():
        field = f"credentials.{name}"
        if not name or "=" in name or "\0" in name:
            raise InvalidArgument(f"{field}: invalid environment variable name")
        source = request.source.env
        if source not in env:
            raise InvalidArgument(
                f"{field}.source.env: {source!r} is not in `env` (the real value goes there)"
            )
        check_value(source, env[source])
        rules = [_rule(rule, f"{field}.inject[{i}]") for i, rule in enumerate(request.inject)]
        credentials.append(
            Credential(name=name, source_env=source, value=env[source],
                       placeholder=PLACEHOLDER_PREFIX + secrets.token_hex(16), inject=rules)
        )  # fmt: skip
    for credential in credentials:  # real values out first: a key may be another's source
        guest_env.pop(credential.source_env, None)
    for credential in credentials:
        guest_env[credential.name] = credential.placeholder
    return credentials, guest_env


def _rule(rule: CredentialInject, field: str) -> InjectRule:
    header, template = rule.as_.header, rule.as_.format
    if not _HEADER.fullmatch(header):
        raise InvalidArgument(f"{field}.as.header: {header!r} is not an HTTP header name")
    if VALUE not in template:
        raise InvalidArgument(f"{field}.as.format: must include ${{value}}")
    if any(c in template for c in "\r\n\0"):
        raise InvalidArgument(f"{field}.as.format: no line breaks or NUL")
    hosts = None
    if rule.hosts is not None:
        if not rule.hosts:
            raise InvalidArgument(f"{field}.hosts: give at least one, or leave it out for all")
        hosts = [validate_host_pattern(h, f"{field}.hosts[{i}]") for i, h in enumerate(rule.hosts)]
    return InjectRule(hosts=hosts, header=header, format=template)


def check_value(name: str, value: str) -> None:
    """A real value must fit in one header line."""
    if any(c in value for c in "\r\n\0"):
        raise InvalidArgument(f"env.{name}: a credential value cannot hold line breaks or NUL")


def headers_for(credentials: list[Credential], host: str) -> dict[str, str]:
    """The headers to set on a request to `host` (name -> value): the first rule of each
    credential that applies; later credentials win a clash."""
    out: dict[str, str] = {}
    for credential in credentials:
        for rule in credential.inject:
            if rule.applies_to(host):
                out[rule.header] = rule.format.replace(VALUE, credential.value)
                break
    return out
