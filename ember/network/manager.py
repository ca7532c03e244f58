"""NetworkManager: the one default network (bridge, NAT, leases, TAPs, shaping)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from ember.errors import InvalidArgument, NotFound, Unavailable
from ember.guest.config import GuestNetwork
from ember.network import links, nft, shaping
from ember.network.dns import DnsResolver, DnsServer, resolv_conf_upstreams
from ember.network.leases import IFB_PREFIX, TAP_PREFIX, Lease, LeaseTable
from ember.network.settings import NetworkSettings, parse_hostport
from ember.store import Store
from ember.units import parse_rate

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

VHOST_NET = Path("/dev/vhost-net")
MIN_RATE = 1000  # bytes/s (8 kbit/s): below that HTB cannot shape meaningfully
# meta key prefix, + the namespace's id: Ember itself turned IPv4 forwarding on in that
# network namespace (uninstall there turns it off again, and nowhere else).
_FORWARDING_MARK = "network.forwarding_enabled_by_ember/"
# Older stores hold one mark that names no namespace: whose forwarding it meant is unknown,
# so it is dropped and never read (never turn off what Ember may not have turned on).
_UNPLACED_FORWARDING_MARK = "network.forwarding_enabled_by_ember"


def off_event_loop(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` in a helper thread when called from a thread running an event loop.

    pyroute2's synchronous IPRoute drives an event loop of its own and refuses to
    run inside a running one. The helper thread starts in the caller's network
    namespace. It blocks the caller's loop for the call (netlink round trips, a few
    ms): async callers should prefer ``await asyncio.to_thread(method, ...)``.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        with ThreadPoolExecutor(1, thread_name_prefix="netlink") as pool:
            return pool.submit(fn, *args, **kwargs).result()

    return wrapper


def parse_limits(
    download: str | None, upload: str | None, *, field: str = "network"
) -> tuple[int | None, int | None]:
    """Parse the API's ``bandwidth_download`` / ``bandwidth_upload`` into bytes/s."""
    rates: list[int | None] = []
    for name, value in (("bandwidth_download", download), ("bandwidth_upload", upload)):
        if value is None or value == "":
            rates.append(None)
            continue
        rate = parse_rate(value, field=f"{field}.{name}")
        if rate < MIN_RATE:
            raise InvalidArgument(f"{field}.{name}: {value!r} is below the minimum 8kbps")
        rates.append(rate)
    return rates[0], rates[1]


def vhost_status() -> tuple[bool, str]:
    """Whether QEMU may use vhost-net here, and why (QEMU 7.2 aborts on vhost=on without it)."""
    if not VHOST_NET.exists():
        return False, f"{VHOST_NET} does not exist: plain TAP (QEMU's userspace virtio-net)"
    if not os.access(VHOST_NET, os.R_OK | os.W_OK):
        return False, f"{VHOST_NET} is not readable and writable: plain TAP"
    return True, f"{VHOST_NET} is present: vhost-net moves packets in the host kernel"


class NetworkManager:
    """Owns the bridge, Ember's nftables table, leases, TAP devices and their shaping.

    All methods are synchronous and quick (netlink round trips, one ``nft`` run in
    ``open``); they act on the network namespace of the calling thread.
    """

    def __init__(self, store: Store, settings: NetworkSettings) -> None:
        self.store = store
        self.settings = settings
        self.leases = LeaseTable(store, settings.subnet, str(settings.gateway_ip))
        self._lock = threading.RLock()

    # --- the network itself ---------------------------------------------------------

    @property
    def bridge_mac(self) -> str:
        """Fixed and derived from the gateway, so it is the same after every restart."""
        return "02:00:" + ":".join(f"{b:02x}" for b in self.settings.gateway_ip.packed)

    @off_event_loop
    def open(self) -> None:
        """Set up the bridge, forwarding and the nftables table; idempotent.

        Refuses (Unavailable) when the subnet overlaps a route that is not on our
        bridge, when leases lie outside the configured subnet, or when forwarding
        cannot be enabled.
        """
        s = self.settings
        with self._lock:
            self._check_leases_fit()
            clashes = links.overlapping_routes(s.subnet, s.bridge)
            if clashes:
                listed = ", ".join(f"{c.destination} via {c.device}" for c in clashes)
                raise Unavailable(
                    f"network: subnet {s.subnet} overlaps existing route(s) {listed}; "
                    "set EMBER_NETWORK_SUBNET to a free range"
                )
            links.ensure_bridge(s.bridge, s.gateway_ip, s.subnet.prefixlen, self.bridge_mac)
            if not links.forwarding_enabled():
                links.set_forwarding(True)
                self._mark_forwarding(True)
            nft.ensure(s.nft_table, s.subnet, s.bridge, s.isolation)

    def _check_leases_fit(self) -> None:
        outside = [
            lease for lease in self.leases.all()
            if ipaddress.IPv4Address(lease.ip) not in self.settings.subnet
        ]  # fmt: skip
        if outside:
            raise Unavailable(
                f"network: {len(outside)} lease(s) (e.g. {outside[0].ip} of instance "
                f"{outside[0].instance_id}) lie outside subnet {self.settings.subnet}; the "
                "subnet changed while instances exist: delete them or restore the subnet"
            )

    def _mark_forwarding(self, set_by_us: bool) -> None:
        """Record (or forget) that Ember turned forwarding on in the caller's namespace."""
        key = _FORWARDING_MARK + links.namespace_id()
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM meta WHERE key = ?", (_UNPLACED_FORWARDING_MARK,))
            if set_by_us:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, '1')", (key,))
            else:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))

    def _forwarding_set_by_us(self) -> bool:
        """Whether Ember turned forwarding on in the caller's namespace (not elsewhere)."""
        key = _FORWARDING_MARK + links.namespace_id()
        return bool(self.store.query("SELECT 1 FROM meta WHERE key = ?", (key,)))

    # --- leases ----------------------------------------------------------------------

    def allocate(
        self,
        instance_id: str,
        name: str,
        download_rate: int | None = None,
        upload_rate: int | None = None,
    ) -> Lease:
        """The instance's lease (IP, MAC, TAP name, limits in bytes/s); idempotent.

        A second call for the same instance keeps its address and MAC and updates
        its name and limits (apply them to a plugged TAP with ``plug``).
        """
        for label, rate in (("bandwidth_download", download_rate),
                            ("bandwidth_upload", upload_rate)):  # fmt: skip
            if rate is not None and rate < MIN_RATE:
                raise InvalidArgument(f"network.{label}: {rate} bytes/s is below 8kbps")
        return self.leases.allocate(instance_id, name, download_rate, upload_rate)

    def lease(self, instance_id: str) -> Lease | None:
        return self.leases.get(instance_id)

    def lease_by_name(self, name: str) -> Lease | None:
        return self.leases.by_name(name)

    @off_event_loop
    def release(self, instance_id: str) -> None:
        """Unplug and forget the lease; idempotent (nothing to release is fine)."""
        with self._lock:
            self.unplug(instance_id)
            self.leases.delete(instance_id)

    # --- devices ---------------------------------------------------------------------

    @off_event_loop
    def plug(self, lease: Lease) -> str:
        """Create (or check) the instance's TAP on the bridge with its shaping; its name.

        Idempotent, and it leaves a TAP that is already right alone (a running VM's
        traffic is not interrupted by an Ember restart).
        """
        s = self.settings
        with self._lock:
            with links.netlink() as ipr:
                bridge = links.index_of(ipr, s.bridge)
            if bridge is None:
                raise Unavailable(f"network: bridge {s.bridge} is missing (open() not run?)")
            links.ensure_tap(lease.tap, bridge, s.isolation)
            shaping.apply(lease.tap, lease.ifb, lease.download_rate, lease.upload_rate)
            self._forget_neighbour(lease.ip)
            return lease.tap

    @off_event_loop
    def unplug(self, instance_id: str) -> None:
        """Remove the instance's TAP, IFB and their qdiscs (they go with the devices)."""
        lease = self.leases.get(instance_id)
        if lease is None:
            return
        with self._lock:
            links.delete_link(lease.tap)
            links.delete_link(lease.ifb)
            self._forget_neighbour(lease.ip)

    def _forget_neighbour(self, ip: str) -> None:
        """Before a VM boots on a lease and after one goes: the host's neighbour entry for
        the address may name another VM's MAC (the address is reused, lowest first)."""
        with links.netlink() as ipr:
            bridge = links.index_of(ipr, self.settings.bridge)
            if bridge is not None:
                links.forget_neighbour(ipr, bridge, ip)

    @off_event_loop
    def set_carrier(self, instance_id: str, up: bool) -> None:
        """Take the instance's TAP down or up. A fork restored from another VM's memory
        first speaks with that VM's MAC and IP: its TAP stays down (the bridge drops and
        learns nothing from a disabled port) until the guest has its own; going up also
        forgets the host's neighbour entry for the lease's IP (it may name an old MAC)."""
        lease = self.leases.get(instance_id)
        if lease is None:
            return
        with self._lock:
            with links.netlink() as ipr:
                index = links.index_of(ipr, lease.tap)
                if index is None:
                    raise Unavailable(f"network: TAP {lease.tap} is missing")
                ipr.link("set", index=index, state="up" if up else "down")
            if up:
                self._forget_neighbour(lease.ip)

    @off_event_loop
    def counters(self, instance_id: str) -> tuple[int, int] | None:
        """(rx_bytes, tx_bytes) as the guest sees them; None when it has no TAP."""
        lease = self.leases.get(instance_id)
        if lease is None:
            raise NotFound(f"instance {instance_id!r} has no network lease")
        host_view = links.stats(lease.tap)
        if host_view is None:
            return None
        host_rx, host_tx = host_view
        return host_tx, host_rx  # what the host sends on the TAP, the guest receives

    def guest_config(self, lease: Lease) -> GuestNetwork:
        gateway = str(self.settings.gateway_ip)
        return GuestNetwork(
            ip=lease.ip,
            prefix=self.settings.subnet.prefixlen,
            gateway=gateway,
            dns=[gateway],  # Ember's DNS responder listens on the gateway address
            mac=lease.mac,
        )

    def resolve(self, name: str) -> str | None:
        """The address of the instance called ``name``, or whose id it is (for the DNS
        responder: an ingress rule may name its instance either way)."""
        lease = self.leases.by_name(name) or self.leases.get(name)
        return lease.ip if lease else None

    def dns_server(self) -> DnsServer:
        """The DNS responder for this network (``await server.start()`` after ``open``).

        It listens on the gateway (port 53, for guests) and on ``dns_listen`` (for
        the host: ingress). Upstreams: the configured ones, else /etc/resolv.conf's,
        never one of its own addresses.
        """
        s = self.settings
        own = [
            (str(s.gateway_ip), s.dns_gateway_port),
            parse_hostport(s.dns_listen, default_port=53, field_name="network dns_listen"),
        ]
        upstreams = [
            parse_hostport(u, default_port=53, field_name="network dns_upstream")
            for u in s.dns_upstream
        ] or resolv_conf_upstreams()
        upstreams = [u for u in upstreams if u not in own and u[0] != str(s.gateway_ip)]
        resolver = DnsResolver(
            s.dns_domain, self.resolve, upstreams, subnet=s.subnet, reverse=self._name_of
        )
        return DnsServer(resolver, own)

    def _name_of(self, ip: str) -> str | None:
        rows = self.store.query("SELECT name FROM network_leases WHERE ip = ?", (ip,))
        return str(rows[0][0]) if rows else None

    # --- restart and teardown --------------------------------------------------------

    @off_event_loop
    def adopt(self) -> list[str]:
        """After a restart: keep (and re-check) every lease's TAP that still exists.

        Returns the instance ids whose TAP was adopted. TAPs on our bridge that no
        lease names (left by a crash between unplug and release) are removed.
        """
        adopted = []
        with self._lock:
            leases = self.leases.all()
            for lease in leases:
                if links.exists(lease.tap):
                    self.plug(lease)
                    adopted.append(lease.instance_id)
            known = {lease.tap for lease in leases}
            for port in links.ports(self.settings.bridge):
                if port.startswith(TAP_PREFIX) and port not in known:
                    log.info("network: removing stray TAP %s", port)
                    links.delete_link(port)
                    links.delete_link(IFB_PREFIX + port.removeprefix(TAP_PREFIX))
        return adopted

    @off_event_loop
    def uninstall(self, *, drop_leases: bool = True) -> list[str]:
        """Remove everything the network made: TAPs, IFBs, bridge, nft table; what went.

        Run it with no VM running. IPv4 forwarding is turned off again only if Ember
        turned it on. ``drop_leases`` also forgets the leases.
        """
        s = self.settings
        removed: list[str] = []
        with self._lock:
            leases = self.leases.all()
            taps = {lease.tap for lease in leases} | {
                p for p in links.ports(s.bridge) if p.startswith(TAP_PREFIX)
            }
            for tap in sorted(taps):
                ifb = IFB_PREFIX + tap.removeprefix(TAP_PREFIX)
                removed += [n for n in (tap, ifb) if links.delete_link(n)]
            if links.delete_link(s.bridge):
                removed.append(s.bridge)
            if nft.delete(s.nft_table):
                removed.append(f"nft table inet {s.nft_table}")
            for family in ("inet", "bridge"):  # mediated egress's (ember/egress)
                if nft.delete(s.egress_table, family):
                    removed.append(f"nft table {family} {s.egress_table}")
            if self._forwarding_set_by_us():
                links.set_forwarding(False)
                self._mark_forwarding(False)
                removed.append("net.ipv4.ip_forward=1")
            if drop_leases:
                for lease in leases:
                    self.leases.delete(lease.instance_id)
                removed += [f"lease {lease.ip} ({lease.name})" for lease in leases]
        return removed

    def capabilities(self) -> dict[str, object]:
        vhost, why = vhost_status()
        s = self.settings
        return {
            "model": "bridge",
            "bridge": s.bridge,
            "subnet": str(s.subnet),
            "gateway": str(s.gateway_ip),
            "isolation": s.isolation,
            "isolation_mechanism": "bridge port isolation" if s.isolation else None,
            "nat": "nftables masquerade",
            "dns_domain": s.dns_domain,
            "bandwidth_limits": "tc htb (upload through ifb)",
            "vhost": vhost,
            "vhost_reason": why,
            "guest_config": "static, from the config disk (no DHCP)",
        }


def uninstall(store: Store, settings: NetworkSettings) -> list[str]:
    """`ember network uninstall`: tear the network down; returns what was removed."""
    return NetworkManager(store, settings).uninstall()
