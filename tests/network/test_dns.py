"""The DNS responder, queried with dnspython (an independent client) inside a namespace."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename

from ember.network.dns import DnsResolver, DnsServer, resolv_conf_upstreams
from ember.testkit.netns import in_netns
from tests.network.conftest import make_manager

WEB_ID = "w" + "1" * 23
UPSTREAM = ("127.0.0.1", 5300)


def ask(
    name: dns.name.Name | str, rdtype: str, where: tuple[str, int], *, tcp: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, where[0], port=where[1], timeout=5)
    return dns.query.udp(query, where[0], port=where[1], timeout=5)


def summary(answer: dns.message.Message) -> tuple[str, list[str], bool]:
    records = [rdata.to_text() for rrset in answer.answer for rdata in rrset]
    return dns.rcode.to_text(answer.rcode()), records, bool(answer.flags & dns.flags.AA)


async def _scenario(db: Path) -> dict[str, object]:
    manager = make_manager(db, dns_upstream=[f"{UPSTREAM[0]}:{UPSTREAM[1]}"])
    manager.open()
    manager.allocate(WEB_ID, "web")
    # The "host's resolver": a second responder, authoritative for another domain.
    upstream = DnsServer(DnsResolver("upstream.test", {"host": "203.0.113.7"}.get, []), [UPSTREAM])
    await upstream.start()
    server = manager.dns_server()
    await server.start()
    loopback, gateway = ("127.0.0.1", 4953), ("10.100.0.1", 53)

    def run(
        name: dns.name.Name | str, rdtype: str, where: tuple[str, int], tcp: bool = False
    ) -> tuple[str, list[str], bool]:
        return summary(ask(name, rdtype, where, tcp=tcp))

    try:
        results: dict[str, object] = {}
        calls: dict[str, tuple[dns.name.Name | str, str, tuple[str, int], bool]] = {
            "web_loopback": ("web.ember.internal", "A", loopback, False),
            "web_gateway": ("WEB.ember.internal.", "A", gateway, False),
            "web_tcp": ("web.ember.internal", "A", gateway, True),
            "web_aaaa": ("web.ember.internal", "AAAA", loopback, False),
            "unknown": ("nope.ember.internal", "A", loopback, False),
            "deep": ("a.web.ember.internal", "A", loopback, False),
            "apex": ("ember.internal", "A", loopback, False),
            "forwarded": ("host.upstream.test", "A", gateway, False),
            "forwarded_tcp": ("host.upstream.test", "A", loopback, True),
            "forwarded_nx": ("other.upstream.test", "A", loopback, False),
            "ptr": (dns.reversename.from_address("10.100.0.2"), "PTR", loopback, False),
            "ptr_free": (dns.reversename.from_address("10.100.0.9"), "PTR", loopback, False),
        }
        for key, (name, rdtype, where, tcp) in calls.items():
            results[key] = await asyncio.to_thread(run, name, rdtype, where, tcp)
        manager.release(WEB_ID)
        results["released"] = await asyncio.to_thread(run, "web.ember.internal", "A", loopback)
        await upstream.stop()
        results["upstream_down"] = await asyncio.to_thread(run, "host.upstream.test", "A", loopback)
        return results
    finally:
        await server.stop()
        await upstream.stop()


def test_dns_answers_names_nxdomain_and_forwards(ns: str, db: Path) -> None:
    r = in_netns(ns, lambda: asyncio.run(_scenario(db)))
    assert r["web_loopback"] == ("NOERROR", ["10.100.0.2"], True)
    assert r["web_gateway"] == ("NOERROR", ["10.100.0.2"], True)
    assert r["web_tcp"] == ("NOERROR", ["10.100.0.2"], True)
    assert r["web_aaaa"] == ("NOERROR", [], True)
    assert r["unknown"] == ("NXDOMAIN", [], True)
    assert r["deep"] == ("NXDOMAIN", [], True)
    assert r["apex"] == ("NOERROR", [], True)
    assert r["forwarded"] == ("NOERROR", ["203.0.113.7"], True)  # the upstream's own AA
    assert r["forwarded_tcp"] == ("NOERROR", ["203.0.113.7"], True)
    assert r["forwarded_nx"] == ("NXDOMAIN", [], True)
    assert r["ptr"] == ("NOERROR", ["web.ember.internal."], True)
    assert r["ptr_free"] == ("NXDOMAIN", [], True)
    assert r["released"] == ("NXDOMAIN", [], True)
    assert r["upstream_down"] == ("SERVFAIL", [], False)


def test_malformed_queries_get_formerr() -> None:
    resolver = DnsResolver("ember.internal", lambda name: None, [])
    reply = asyncio.run(resolver.answer(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab"))
    assert reply is not None and reply[:2] == b"\x12\x34" and reply[3] & 0x0F == 1
    assert asyncio.run(resolver.answer(b"\x00")) is None


def test_resolv_conf_upstreams(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 192.0.2.53\nnameserver ::1\nsearch example\n")
    assert resolv_conf_upstreams(conf) == [("192.0.2.53", 53)]
    assert resolv_conf_upstreams(tmp_path / "missing") == []


def test_ptr_outside_the_subnet_is_not_ours() -> None:
    resolver = DnsResolver(
        "ember.internal", lambda n: None, [], subnet=ipaddress.IPv4Network("10.100.0.0/16")
    )
    assert resolver._ptr_address("2.0.100.10.in-addr.arpa") == "10.100.0.2"
    assert resolver._ptr_address("1.1.168.192.in-addr.arpa") is None
