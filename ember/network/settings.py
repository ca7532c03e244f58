"""The network's settings, checked once: subnet, gateway, bridge, DNS, isolation."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ember.errors import InvalidArgument

if TYPE_CHECKING:
    from ember.config import Settings

DEFAULT_SUBNET = "10.100.0.0/16"
DEFAULT_BRIDGE = "ember0"
DEFAULT_DOMAIN = "ember.internal"
DEFAULT_DNS_LISTEN = "127.0.0.1:4953"
DEFAULT_NFT_TABLE = "ember"
IFNAMSIZ = 15  # Linux interface names are at most 15 bytes
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_NFT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def parse_hostport(value: str, *, default_port: int, field_name: str) -> tuple[str, int]:
    """ "1.2.3.4" or "1.2.3.4:53" -> ("1.2.3.4", 53); IPv4 only."""
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    try:
        ipaddress.IPv4Address(host)
        number = int(port) if port else default_port
    except ValueError as exc:
        raise InvalidArgument(f"{field_name}: {value!r} is not IPv4[:port]") from exc
    if not 0 < number < 65536:
        raise InvalidArgument(f"{field_name}: port {number} is out of range")
    return host, number


@dataclass(frozen=True)
class NetworkSettings:
    """Validated settings of Ember's one network (see ``from_settings`` for their source)."""

    subnet: ipaddress.IPv4Network = field(default=ipaddress.IPv4Network(DEFAULT_SUBNET))
    gateway: ipaddress.IPv4Address | None = None  # None: the subnet's first host
    bridge: str = DEFAULT_BRIDGE
    dns_domain: str = DEFAULT_DOMAIN
    # host[:port] resolvers for names outside dns_domain; empty: /etc/resolv.conf's.
    dns_upstream: tuple[str, ...] = ()
    # Where the DNS responder also listens for the host's own use (Caddy): host:port.
    dns_listen: str = DEFAULT_DNS_LISTEN
    # Port of the responder on the gateway address (what guests use); 53 but for tests.
    dns_gateway_port: int = 53
    isolation: bool = True
    nft_table: str = DEFAULT_NFT_TABLE

    @property
    def egress_table(self) -> str:
        """The name of ember/egress's `inet` and `bridge` tables (uninstall removes them)."""
        return f"{self.nft_table}_egress"

    def __post_init__(self) -> None:
        if self.subnet.prefixlen > 29:
            raise InvalidArgument(f"network subnet: {self.subnet} is too small (at most /29)")
        if self.subnet.prefixlen < 8:
            raise InvalidArgument(f"network subnet: {self.subnet} is too large (at least /8)")
        if self.gateway is None:
            object.__setattr__(self, "gateway", next(self.subnet.hosts()))
        if self.gateway_ip not in self.subnet or self.gateway_ip in (
            self.subnet.network_address,
            self.subnet.broadcast_address,
        ):
            raise InvalidArgument(f"network gateway: {self.gateway} is not a host of {self.subnet}")
        if not _IFNAME.match(self.bridge):
            raise InvalidArgument(f"network bridge: {self.bridge!r} is not a valid interface name")
        if not _NFT_NAME.match(self.nft_table):
            raise InvalidArgument(f"network nft_table: {self.nft_table!r} is not a valid name")
        labels = self.dns_domain.lower().rstrip(".").split(".")
        if not all(_LABEL.match(label) for label in labels):
            raise InvalidArgument(f"network dns_domain: {self.dns_domain!r} is not a domain name")
        object.__setattr__(self, "dns_domain", ".".join(labels))
        for upstream in self.dns_upstream:
            parse_hostport(upstream, default_port=53, field_name="network dns_upstream")
        parse_hostport(self.dns_listen, default_port=53, field_name="network dns_listen")

    @property
    def gateway_ip(self) -> ipaddress.IPv4Address:
        assert self.gateway is not None  # set in __post_init__
        return self.gateway

    @classmethod
    def from_values(
        cls,
        subnet: str = DEFAULT_SUBNET,
        gateway: str | None = None,
        *,
        bridge: str = DEFAULT_BRIDGE,
        dns_domain: str = DEFAULT_DOMAIN,
        dns_upstream: Sequence[str] = (),
        dns_listen: str = DEFAULT_DNS_LISTEN,
        dns_gateway_port: int = 53,
        isolation: bool = True,
        nft_table: str = DEFAULT_NFT_TABLE,
    ) -> NetworkSettings:
        """Build from plain strings, turning parse errors into InvalidArgument."""
        try:
            net = ipaddress.IPv4Network(subnet, strict=True)
        except ValueError as exc:
            raise InvalidArgument(f"network subnet: {subnet!r} is not an IPv4 network") from exc
        try:
            gw = ipaddress.IPv4Address(gateway) if gateway else None
        except ValueError as exc:
            raise InvalidArgument(f"network gateway: {gateway!r} is not an IPv4 address") from exc
        return cls(
            subnet=net,
            gateway=gw,
            bridge=bridge,
            dns_domain=dns_domain,
            dns_upstream=tuple(dns_upstream),
            dns_listen=dns_listen,
            dns_gateway_port=dns_gateway_port,
            isolation=isolation,
            nft_table=nft_table,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> NetworkSettings:
        return cls.from_values(
            subnet=settings.network_subnet,
            gateway=settings.network_gateway,
            bridge=settings.network_bridge,
            dns_domain=settings.network_dns_domain,
            dns_upstream=settings.network_dns_upstream,
            dns_listen=settings.network_dns_listen,
            isolation=settings.network_isolation,
            nft_table=settings.network_nft_table,
        )
