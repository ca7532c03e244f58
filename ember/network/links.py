"""Netlink (pyroute2) operations on links, addresses and routes, each idempotent.

Every function opens its own short-lived ``IPRoute`` socket: they are cheap, and
a socket per call is safe from any thread (pyroute2 sockets are not shared-safe).
The socket talks to the network namespace of the calling thread.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ember.errors import Unavailable

_ENODEV = 19
_EEXIST = 17


@contextmanager
def netlink() -> Iterator[Any]:
    with IPRoute() as ipr:
        yield ipr


def index_of(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_info(ipr: Any, index: int) -> Any:
    return ipr.link("get", index=index)[0]


def link_kind(msg: Any) -> str | None:
    info = msg.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info else None


def ensure_bridge(name: str, gateway: ipaddress.IPv4Address, prefix: int, mac: str) -> int:
    """The bridge, up, with exactly the gateway address (IPv4) and a fixed MAC.

    A fixed MAC because a bridge otherwise takes the lowest MAC of its ports: it
    would change as VMs come and go, and guests would hold a stale ARP entry for
    their gateway.
    """
    with netlink() as ipr:
        index = index_of(ipr, name)
        if index is None:
            ipr.link("add", ifname=name, kind="bridge")
            index = index_of(ipr, name)
            assert index is not None
        elif link_kind(link_info(ipr, index)) != "bridge":
            raise Unavailable(
                f"network: interface {name!r} exists and is not a bridge; "
                "choose another EMBER_NETWORK_BRIDGE or remove it"
            )
        ipr.link("set", index=index, address=mac, state="up")
        wanted = (str(gateway), prefix)
        have = {
            (a.get("IFA_ADDRESS"), a["prefixlen"])
            for a in ipr.get_addr(index=index, family=socket.AF_INET)
        }
        for address, length in have - {wanted}:
            ipr.addr("del", index=index, address=address, prefixlen=length)
        if wanted not in have:
            ipr.addr("add", index=index, address=wanted[0], prefixlen=prefix)
        return index


@dataclass(frozen=True, slots=True)
class RouteClash:
    destination: str
    device: str


def overlapping_routes(subnet: ipaddress.IPv4Network, own_bridge: str) -> list[RouteClash]:
    """Routes (any table) whose destination overlaps ``subnet`` and that are not ours.

    Default routes (/0) overlap everything and are skipped: the subnet only has to
    be more specific than them. Local/broadcast routes the kernel makes for an
    address on our bridge are ours.
    """
    clashes = []
    with netlink() as ipr:
        names = {int(link["index"]): link.get("IFLA_IFNAME") for link in ipr.get_links()}
        for route in ipr.get_routes(family=socket.AF_INET):  # every table
            if route["dst_len"] == 0:
                continue
            dst = ipaddress.IPv4Network(f"{route.get('RTA_DST')}/{route['dst_len']}", strict=False)
            device = names.get(int(route.get("RTA_OIF") or 0), "?")
            if dst.overlaps(subnet) and device != own_bridge:
                clashes.append(RouteClash(str(dst), device))
    return clashes


def ensure_tap(name: str, bridge_index: int, isolated: bool) -> int:
    """A persistent TAP on the bridge, up, port-isolated as asked.

    Created by root for root (uid/gid 0 — QEMU runs as root here); persistent so it
    outlives the QEMU that opens it (a stop/start or an Ember restart keeps it).
    ``vnet_hdr`` and no packet info, the flags QEMU sets when it opens a TAP. The
    TAP keeps a random MAC of its own: were it the guest's, the bridge would take
    the guest's frames as addressed to the host.
    """
    with netlink() as ipr:
        index = index_of(ipr, name)
        if index is None:
            ipr.link(
                "add", ifname=name, kind="tuntap", mode="tap", uid=0, gid=0,
                ifr={"no_pi": True, "vnet_hdr": True},
            )  # fmt: skip
            index = index_of(ipr, name)
            assert index is not None
        msg = link_info(ipr, index)
        if link_kind(msg) != "tun":
            raise Unavailable(f"network: interface {name!r} exists and is not a TAP")
        if msg.get("IFLA_MASTER") != bridge_index:
            ipr.link("set", index=index, master=bridge_index)
        ipr.brport("set", index=index, isolated=1 if isolated else 0)
        ipr.link("set", index=index, state="up")
        return index


def ensure_ifb(name: str) -> int:
    with netlink() as ipr:
        index = index_of(ipr, name)
        if index is None:
            ipr.link("add", ifname=name, kind="ifb")
            index = index_of(ipr, name)
            assert index is not None
        # An IFB's default queue is 32 packets: too short for a shaped TCP upload (drops).
        ipr.link("set", index=index, txqlen=1000, state="up")
        return index


def delete_link(name: str) -> bool:
    """Remove an interface if it exists; True if it did."""
    with netlink() as ipr:
        index = index_of(ipr, name)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != _ENODEV:  # gone meanwhile: what we wanted
                raise
        return True


def exists(name: str) -> bool:
    with netlink() as ipr:
        return index_of(ipr, name) is not None


def ports(bridge: str) -> list[str]:
    """Names of the interfaces enslaved to ``bridge``."""
    with netlink() as ipr:
        index = index_of(ipr, bridge)
        if index is None:
            return []
        return [str(link.get("IFLA_IFNAME")) for link in ipr.get_links(master=index)]


def stats(name: str) -> tuple[int, int] | None:
    """(rx_bytes, tx_bytes) of an interface as the host sees it; None if it is gone."""
    with netlink() as ipr:
        index = index_of(ipr, name)
        if index is None:
            return None
        counters = link_info(ipr, index).get("IFLA_STATS64")
        return int(counters["rx_bytes"]), int(counters["tx_bytes"])


def forget_neighbour(ipr: Any, device_index: int, ip: str) -> None:
    """Drop the host's ARP entries for `ip` on the device: they may name the MAC of a VM
    that held the address before (deleted, or the source of a fork). Left alone, a
    REACHABLE entry keeps sending to that MAC until it goes stale (~40 s measured)."""
    for entry in ipr.get_neighbours(ifindex=device_index, dst=ip):
        try:
            ipr.neigh("del", ifindex=device_index, dst=ip, lladdr=entry.get("NDA_LLADDR"))
        except NetlinkError as exc:
            if exc.code != errno.ENOENT:  # gone meanwhile is fine
                raise


# /proc/sys/net is per network namespace: this reads and writes the caller's.
FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_SO_NETNS_COOKIE = 71  # Linux 5.14+: a 64-bit id of the socket's namespace, never reused


def namespace_id() -> str:
    """Which network namespace the calling thread is in, as `<boot id>/<netns cookie>`.

    The cookie, unlike the inode of /proc/self/ns/net (which a later namespace may get
    again once this one is gone), is never reused while the kernel runs; the boot id
    makes it unique across reboots too.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        cookie = int.from_bytes(probe.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8), "little")
    return f"{BOOT_ID.read_text().strip()}/{cookie}"


def forwarding_enabled() -> bool:
    return FORWARDING.read_text().strip() == "1"


def set_forwarding(enabled: bool) -> None:
    try:
        FORWARDING.write_text("1\n" if enabled else "0\n")
    except OSError as exc:
        raise Unavailable(
            f"network: cannot {'enable' if enabled else 'disable'} IPv4 forwarding "
            f"({FORWARDING}: {exc.strerror}); guests would have no outbound traffic. "
            "Run Ember as root with a writable /proc/sys, or set net.ipv4.ip_forward=1"
        ) from exc
    if forwarding_enabled() != enabled:
        raise Unavailable(f"network: {FORWARDING} did not take the value {int(enabled)}")
