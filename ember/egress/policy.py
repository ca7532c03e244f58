"""Egress policy: allow and deny lists of domain patterns and CIDRs, and the decision.

An entry is a CIDR (`10.0.0.0/8`, or one address), an exact domain
(`api.example.com`) or a wildcard (`*.example.com`: any name below it, not the
name itself). A connection has an address and, when the proxy could read one,
a name (TLS SNI or HTTP Host). It is refused when it matches a deny entry;
otherwise, when the allow list is not empty, it must match an allow entry.
Pure: parsing and deciding touch nothing.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from ember.errors import InvalidArgument

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class EgressPolicy(BaseModel):
    """The policy as given and stored (entries normalised: lowercase names, CIDRs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: list[str] = Field(
        default_factory=list,
        description="Domains (exact or `*.` wildcard) and CIDRs; when not empty, only "
        "these are reachable",
    )
    deny: list[str] = Field(
        default_factory=list, description="Domains and CIDRs refused (deny wins over allow)"
    )

    @property
    def empty(self) -> bool:
        return not self.allow and not self.deny


def validate_host_pattern(value: str, field: str) -> str:
    """`api.example.com` or `*.example.com`, lowercased; InvalidArgument otherwise."""
    name = value.strip().lower().rstrip(".")
    bare = name[2:] if name.startswith("*.") else name
    labels = bare.split(".")
    if not bare or len(bare) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidArgument(f"{field}: {value!r} is not a domain name or a `*.` wildcard of one")
    return name


def parse_entry(value: str, field: str) -> Network | str:
    """A CIDR (an address alone is a /32 or /128) or a domain pattern."""
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        if "/" in value or _looks_numeric(value):
            raise InvalidArgument(f"{field}: {value!r} is not a valid CIDR ({exc})") from exc
    return validate_host_pattern(value, field)


def _looks_numeric(value: str) -> bool:
    return bool(value) and all(c.isdigit() or c in ".:" for c in value.strip())


def normalise(policy: EgressPolicy, field: str = "policy") -> EgressPolicy:
    """Validate every entry (InvalidArgument naming the first bad one) and store them
    in a canonical spelling, without duplicates."""

    def canonical(entries: list[str], name: str) -> list[str]:
        out: list[str] = []
        for index, entry in enumerate(entries):
            text = str(parse_entry(entry, f"{field}.{name}[{index}]"))
            if text not in out:
                out.append(text)
        return out

    return EgressPolicy(allow=canonical(policy.allow, "allow"), deny=canonical(policy.deny, "deny"))


def host_matches(pattern: str, host: str) -> bool:
    """Whether `host` (a name, any case, maybe a trailing dot) matches one pattern."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # which entry decided, or why nothing did


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A normalised policy split into names and networks, for matching."""

    allow_names: tuple[str, ...]
    allow_networks: tuple[Network, ...]
    deny_names: tuple[str, ...]
    deny_networks: tuple[Network, ...]

    @classmethod
    def of(cls, policy: EgressPolicy) -> CompiledPolicy:
        def split(entries: list[str]) -> tuple[tuple[str, ...], tuple[Network, ...]]:
            parsed = [parse_entry(e, "policy") for e in entries]
            return (
                tuple(p for p in parsed if isinstance(p, str)),
                tuple(p for p in parsed if not isinstance(p, str)),
            )

        allow_names, allow_networks = split(policy.allow)
        deny_names, deny_networks = split(policy.deny)
        return cls(allow_names, allow_networks, deny_names, deny_networks)

    @property
    def restricts(self) -> bool:
        """An allow list exists: whatever it does not name is refused."""
        return bool(self.allow_names or self.allow_networks)

    def decide(self, address: str, name: str | None) -> Decision:
        ip = ipaddress.ip_address(address)
        for pattern in self.deny_names:
            if name and host_matches(pattern, name):
                return Decision(False, f"{name} is denied by {pattern}")
        for network in self.deny_networks:
            if ip in network:
                return Decision(False, f"{ip} is denied by {network}")
        if not self.restricts:
            return Decision(True, "no allow list")
        for pattern in self.allow_names:
            if name and host_matches(pattern, name):
                return Decision(True, f"{name} is allowed by {pattern}")
        for network in self.allow_networks:
            if ip in network:
                return Decision(True, f"{ip} is allowed by {network}")
        target = f"{name} ({ip})" if name else str(ip)
        return Decision(False, f"{target} is not in the allow list")
