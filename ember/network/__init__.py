"""Ember's one default network: bridge, NAT, leases, TAPs, shaping and DNS names."""

from ember.network.dns import DnsResolver, DnsServer
from ember.network.leases import Lease
from ember.network.manager import NetworkManager, parse_limits, uninstall, vhost_status
from ember.network.settings import NetworkSettings

__all__ = [
    "DnsResolver",
    "DnsServer",
    "Lease",
    "NetworkManager",
    "NetworkSettings",
    "parse_limits",
    "uninstall",
    "vhost_status",
]
