"""NetworkManager against the real kernel, inside a namespace each test creates."""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path
from typing import TypedDict

import pytest

from ember.errors import InvalidArgument, Unavailable
from ember.network import Lease, NetworkSettings, links, nft, parse_limits, shaping
from ember.testkit.netns import created_namespaces, in_netns, netns, sh
from tests.network.conftest import make_manager

ID_A = "a" + "1" * 23
ID_B = "b" + "2" * 23
ID_C = "c" + "3" * 23


def link_names() -> set[str]:
    return {line.split()[0].split("@")[0] for line in sh("ip -br link").splitlines()}


def nft_tables() -> list[str]:
    return [line.strip() for line in sh("nft list tables").splitlines()]


# What each scenario brings back out of its namespace's child process.
class PlugResult(TypedDict):
    tap: str
    same_device: bool
    link: str
    qdisc_tap: str
    class_tap: str
    plain_qdisc: str
    names: set[str]
    counters: tuple[int, int] | None


class UninstallResult(TypedDict):
    after_unplug: set[str]
    lease_kept: bool
    removed: list[str]
    names: set[str]
    tables: list[str]
    forwarding: str
    leases: list[Lease | None]
    qdiscs: str


class AdoptResult(TypedDict):
    adopted: list[str]
    same: bool
    shaping: dict[str, object]
    names: set[str]


def test_open_is_idempotent_and_leaves_other_tables_alone(ns: str, db: Path) -> None:
    def scenario() -> tuple[str, str, str, str, str, str]:
        # Someone else's table with a rule, made before Ember starts.
        sh("nft add table inet other && nft add chain inet other c")
        sh("nft add rule inet other c accept")
        before_other = sh("nft list table inet other")
        manager = make_manager(db)
        manager.open()
        first = sh("nft list table inet ember")
        manager.open()
        return (
            first,
            sh("nft list table inet ember"),
            sh("ip -br addr show ember0"),
            Path("/proc/sys/net/ipv4/ip_forward").read_text(),
            before_other,
            sh("nft list table inet other"),
        )

    first, second, addr, forwarding, other_before, other_after = in_netns(ns, scenario)
    assert first == second
    assert "masquerade" in first and 'iifname "ember0" oifname "ember0" drop' in first
    assert "10.100.0.1/16" in addr and addr.split()[1] in ("UP", "DOWN", "UNKNOWN")
    assert forwarding.strip() == "1"
    assert other_before == other_after


def test_open_refuses_a_subnet_that_overlaps_a_route(ns: str, db: Path) -> None:
    def scenario() -> tuple[str, set[str], list[str]]:
        sh("ip link add dummy0 type bridge && ip addr add 10.100.5.1/24 dev dummy0 "
           "&& ip link set dummy0 up")  # fmt: skip
        with pytest.raises(Unavailable) as failure:
            make_manager(db).open()
        return failure.value.message, link_names(), nft_tables()

    message, names, tables = in_netns(ns, scenario)
    assert "overlaps" in message and "10.100.5.0/24 via dummy0" in message
    assert "EMBER_NETWORK_SUBNET" in message
    assert "ember0" not in names and not any("ember" in t for t in tables)


def test_another_subnet_starts_beside_the_route(ns: str, db: Path) -> None:
    def scenario() -> str:
        sh("ip link add dummy0 type bridge && ip addr add 10.100.5.1/24 dev dummy0")
        make_manager(db, subnet="10.201.0.0/24").open()
        return sh("ip -br addr show ember0")

    assert "10.201.0.1/24" in in_netns(ns, scenario)


def test_open_refuses_when_forwarding_cannot_be_enabled(ns: str, db: Path) -> None:
    def scenario() -> str:
        # A private mount namespace where ip_forward is read-only (as in a locked-down
        # container): the write really fails.
        if ctypes.CDLL(None, use_errno=True).unshare(0x00020000) != 0:  # CLONE_NEWNS
            pytest.skip("cannot unshare the mount namespace")
        knob = "/proc/sys/net/ipv4/ip_forward"
        sh(f"mount --make-rprivate / && mount --bind {knob} {knob} "
           f"&& mount -o remount,bind,ro {knob}")  # fmt: skip
        with pytest.raises(Unavailable) as failure:
            make_manager(db).open()
        return failure.value.message

    message = in_netns(ns, scenario)
    assert "cannot enable IPv4 forwarding" in message and "net.ipv4.ip_forward" in message


def test_leases_are_unique_lowest_first_and_persisted(db: Path) -> None:
    # Leases are SQLite only: no namespace needed.
    manager = make_manager(db, subnet="10.100.0.0/29")  # hosts .1 (gateway) to .6
    a = manager.allocate(ID_A, "a", 1_000_000, None)
    b = manager.allocate(ID_B, "b")
    c = manager.allocate(ID_C, "c")
    assert [a.ip, b.ip, c.ip] == ["10.100.0.2", "10.100.0.3", "10.100.0.4"]
    assert len({a.mac, b.mac, c.mac}) == 3 and all(m.startswith("02:") for m in (a.mac, b.mac))
    assert len({a.tap, b.tap, c.tap}) == 3 and all(len(t) <= 15 for t in (a.tap, b.tap, c.tap))
    assert a.tap == "tap-a1111111111" and a.ifb == "ifb-a1111111111"
    # Allocating again keeps the address and MAC, and updates name and limits.
    again = manager.allocate(ID_A, "a2", None, 2_000_000)
    assert (again.ip, again.mac, again.name, again.download_rate, again.upload_rate) == (
        a.ip, a.mac, "a2", None, 2_000_000)  # fmt: skip
    manager.release(ID_B)
    manager.release(ID_B)  # idempotent
    assert manager.lease(ID_B) is None
    # A new manager on the same store (an Ember restart) sees the same leases.
    restarted = make_manager(db, subnet="10.100.0.0/29")
    assert restarted.lease(ID_A) == again and restarted.lease_by_name("c") == c
    assert restarted.allocate("d" + "4" * 23, "d").ip == "10.100.0.3"  # the freed one
    restarted.allocate("e" + "5" * 23, "e")
    restarted.allocate("f" + "6" * 23, "f")
    with pytest.raises(Unavailable, match="no free address"):
        restarted.allocate("g" + "7" * 23, "g")


def test_limits_are_parsed_and_checked() -> None:
    assert parse_limits("1Gbps", "125MB/s") == (125_000_000, 125 * 1024 * 1024)
    assert parse_limits(None, "") == (None, None)
    with pytest.raises(InvalidArgument, match=r"network\.bandwidth_upload"):
        parse_limits("1Gbps", "fast")
    with pytest.raises(InvalidArgument, match=r"network\.bandwidth_download.*minimum"):
        parse_limits("10bps", None)


def test_settings_are_validated() -> None:
    with pytest.raises(InvalidArgument, match="network subnet"):
        NetworkSettings.from_values(subnet="10.100.0.1/16")  # host bits set
    with pytest.raises(InvalidArgument, match="network gateway"):
        NetworkSettings.from_values(subnet="10.100.0.0/24", gateway="10.101.0.1")
    with pytest.raises(InvalidArgument, match="network bridge"):
        NetworkSettings.from_values(bridge="a-very-long-bridge-name")
    assert str(NetworkSettings.from_values(subnet="172.31.8.0/22").gateway) == "172.31.8.1"


def test_plug_makes_an_isolated_shaped_tap(ns: str, db: Path) -> None:
    def scenario() -> PlugResult:
        manager = make_manager(db)
        manager.open()
        lease = manager.allocate(ID_A, "web", 2_000_000, 1_000_000)
        tap = manager.plug(lease)
        first_index = _ifindex(tap)
        assert manager.plug(lease) == tap  # idempotent: same device, untouched
        plain = manager.allocate(ID_B, "plain")
        manager.plug(plain)
        # New limits on the same lease are applied by plugging again.
        manager.plug(manager.allocate(ID_A, "web", 3_000_000, None))
        return {
            "tap": tap,
            "same_device": first_index == _ifindex(tap),
            "link": sh(f"ip -d link show {tap}"),
            "qdisc_tap": sh(f"tc qdisc show dev {tap}"),
            "class_tap": sh(f"tc class show dev {tap}"),
            "plain_qdisc": sh(f"tc qdisc show dev {plain.tap}"),
            "names": link_names(),
            "counters": manager.counters(ID_A),
        }

    def first_shaping() -> dict[str, str]:
        manager = make_manager(db)
        manager.open()
        lease = manager.allocate(ID_A, "web", 2_000_000, 1_000_000)
        manager.plug(lease)
        return {
            "filter": sh(f"tc filter show dev {lease.tap} ingress"),
            "ifb_class": sh(f"tc class show dev {lease.ifb}"),
            "tap_class": sh(f"tc class show dev {lease.tap}"),
        }

    shaped = in_netns(ns, first_shaping)
    assert "mirred (Egress Redirect to device ifb-a1111111111)" in shaped["filter"]
    assert "rate 8Mbit" in shaped["ifb_class"]  # 1 MB/s upload
    assert "rate 16Mbit" in shaped["tap_class"]  # 2 MB/s download

    result = in_netns(ns, scenario)
    link = result["link"]
    assert "master ember0" in link and "isolated on" in link and "tun type tap" in link
    assert "persist on" in link and ",UP>" in link  # up (no carrier until QEMU opens it)
    assert result["same_device"]
    assert "htb 1:" in result["qdisc_tap"] and "rate 24Mbit" in result["class_tap"]
    assert "ingress" not in result["qdisc_tap"]  # upload limit dropped...
    assert "ifb-a1111111111" not in result["names"]  # ...and its IFB with it
    assert "htb" not in result["plain_qdisc"] and "ifb-b2222222222" not in result["names"]
    assert result["counters"] == (0, 0)


def _ifindex(name: str) -> int:
    with links.netlink() as ipr:
        index = links.index_of(ipr, name)
    assert index is not None
    return index


def test_unplug_and_uninstall_leave_nothing(ns: str, db: Path) -> None:
    def scenario() -> UninstallResult:
        sh("nft add table inet other")
        manager = make_manager(db)
        manager.open()
        for instance_id, name in ((ID_A, "a"), (ID_B, "b")):
            manager.plug(manager.allocate(instance_id, name, 1_000_000, 1_000_000))
        manager.unplug(ID_A)
        after_unplug = link_names()
        lease_kept = manager.lease(ID_A) is not None
        removed = manager.uninstall()
        return {
            "after_unplug": after_unplug,
            "lease_kept": lease_kept,
            "removed": removed,
            "names": link_names(),
            "tables": nft_tables(),
            "forwarding": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
            "leases": [manager.lease(ID_A), manager.lease(ID_B)],
            "qdiscs": sh("tc qdisc show"),
        }

    r = in_netns(ns, scenario)
    assert "tap-a1111111111" not in r["after_unplug"] and "ifb-a1111111111" not in r["after_unplug"]
    assert "tap-b2222222222" in r["after_unplug"] and r["lease_kept"]
    assert r["names"] == {"lo"}
    assert r["tables"] == ["table inet other"]
    assert r["forwarding"] == "0"  # Ember turned it on, so uninstall turned it off
    assert r["leases"] == [None, None]
    assert "htb" not in r["qdiscs"] and "ingress" not in r["qdiscs"]
    assert "nft table inet ember" in r["removed"] and "ember0" in r["removed"]


def test_uninstall_keeps_forwarding_it_did_not_enable(ns: str, db: Path) -> None:
    def scenario() -> str:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        manager = make_manager(db)
        manager.open()
        manager.uninstall()
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()

    assert in_netns(ns, scenario) == "1"


def test_adopt_keeps_live_taps_and_removes_strays(ns: str, db: Path) -> None:
    def scenario() -> AdoptResult:
        manager = make_manager(db)
        manager.open()
        lease = manager.allocate(ID_A, "a", 1_000_000, 1_000_000)
        manager.plug(lease)
        manager.allocate(ID_B, "b")  # a stopped VM: lease, no TAP
        before = _ifindex(lease.tap)
        sh("ip tuntap add tap-zzzzzzzzzzz mode tap && ip link set tap-zzzzzzzzzzz master ember0")
        sh("ip tuntap add tap-notours mode tap")  # not on our bridge: not ours to remove
        restarted = make_manager(db)  # Ember restarts
        restarted.open()
        adopted = restarted.adopt()
        return {
            "adopted": adopted,
            "same": _ifindex(lease.tap) == before,
            "shaping": shaping.describe(lease.tap),
            "names": link_names(),
        }

    r = in_netns(ns, scenario)
    assert r["adopted"] == [ID_A] and r["same"]
    assert r["shaping"]["rate"] == 1_000_000 and r["shaping"]["ingress"]
    assert "tap-zzzzzzzzzzz" not in r["names"] and "tap-notours" in r["names"]


def test_capabilities_report_the_model(db: Path) -> None:
    caps = make_manager(db).capabilities()
    assert caps["model"] == "bridge" and caps["isolation"] is True
    assert caps["vhost"] is Path("/dev/vhost-net").exists()
    assert "vhost-net" in str(caps["vhost_reason"])


def test_nft_ruleset_without_isolation_routes_between_guests() -> None:
    import ipaddress

    text = nft.ruleset("ember", ipaddress.IPv4Network("10.100.0.0/16"), "ember0", False)
    assert 'oifname "ember0" drop' in text and 'iifname "ember0" oifname' not in text
    assert json.dumps(text)  # a plain string script


def test_no_namespace_is_left_behind() -> None:
    # Runs last in this module: every namespace this process's tests made is gone (other
    # test runs on the machine may have theirs).
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not set(created_namespaces()) & {line.split()[0] for line in names.splitlines()}


def test_forwarding_is_restored_only_in_the_namespace_where_ember_set_it(db: Path) -> None:
    """The demo's namespace and the host share one store: an uninstall in the host's
    namespace must not turn off forwarding that Ember turned on only in the demo's."""
    forwarding = Path("/proc/sys/net/ipv4/ip_forward")

    def open_network() -> str:
        make_manager(db).open()
        return forwarding.read_text().strip()

    def uninstall() -> str:
        make_manager(db).uninstall()
        return forwarding.read_text().strip()

    with netns() as demo, netns() as host:
        assert in_netns(demo, open_network) == "1"  # off in a new namespace: Ember set it
        in_netns(host, forwarding.write_text, "1\n")  # on before Ember: not Ember's
        assert in_netns(host, open_network) == "1"
        assert in_netns(host, uninstall) == "1"
        assert in_netns(demo, uninstall) == "0"  # where Ember set it, it is restored


def test_a_reused_address_has_no_stale_neighbour_entry(ns: str, db: Path) -> None:
    """The host must not keep sending a deleted VM's address to the deleted VM's MAC
    when a new VM gets that address (it did for ~40 s, until the entry went stale)."""

    def scenario() -> tuple[str, str, str, str]:
        manager = make_manager(db)
        manager.open()
        old = manager.allocate(ID_A, "old")
        manager.plug(old)
        stale = f"ip neigh replace {old.ip} lladdr 02:aa:bb:cc:dd:ee dev ember0 nud reachable"
        sh(stale)
        manager.release(ID_A)  # the VM is deleted
        after_release = sh(f"ip neigh show {old.ip} dev ember0")
        sh(stale)  # e.g. a frame from the old guest arrived meanwhile
        new = manager.allocate(ID_B, "new")
        manager.plug(new)  # before the new VM boots
        return new.ip, old.ip, after_release, sh(f"ip neigh show {new.ip} dev ember0")

    new_ip, old_ip, after_release, after_plug = in_netns(ns, scenario)
    assert new_ip == old_ip  # the lowest free address: the deleted VM's
    assert after_release.strip() == "" and after_plug.strip() == ""
