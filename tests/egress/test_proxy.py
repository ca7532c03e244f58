"""The proxy on loopback, against real TLS and HTTP servers (no VM, no NAT: the original
destination is given by the test, which nftables' SO_ORIGINAL_DST gives in production)."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ember.egress.ca import CA_CERT, MAX_LEAVES, CertificateAuthority, create_ca
from ember.egress.credentials import CredentialRequest, plan_credentials
from ember.egress.flows import FlowLog
from ember.egress.manager import upstream_context
from ember.egress.policy import CompiledPolicy, EgressPolicy, normalise
from ember.egress.proxy import EgressProxy, Tenant, parse_sni

SECRET = "s3cret-value"
NAME = "api.example.test"


@dataclass
class Upstream:
    """A server that records each request head and answers 200 "ok" (closing after
    `Connection: close`, as HTTP servers do)."""

    heads: list[str] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"Content-Length: (\d+)", head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                self.heads.append(head.decode() + body.decode())
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if b"Connection: close" in head:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@dataclass
class Rig:
    proxy: EgressProxy
    tenant: Tenant
    tls: Upstream
    plain: Upstream
    guest_trust: ssl.SSLContext  # trusts the instance's CA, as the guest does
    upstream_ca: CertificateAuthority
    target: list[tuple[str, int]]  # where the "guest" connection was going

    async def request(self, name: str, port: int, tls: bool, headers: str = "") -> bytes:
        self.target[:] = [("127.0.0.1", port)]
        host, proxy_port = self.proxy.address
        reader, writer = await asyncio.open_connection(
            host, proxy_port, ssl=self.guest_trust if tls else None,
            server_hostname=name if tls else None,
        )  # fmt: skip
        writer.write(
            f"GET / HTTP/1.1\r\nHost: {name}\r\n{headers}Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return answer


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    create_ca(tmp_path / "upstream", "upstream")  # the "public" CA the real server uses
    create_ca(tmp_path / "instance", "instance")
    upstream_ca = CertificateAuthority(tmp_path / "upstream")
    tls, plain = Upstream(), Upstream()
    tls_server = await asyncio.start_server(
        tls.handle, "127.0.0.1", 0, ssl=upstream_ca.server_context(NAME)
    )
    plain_server = await asyncio.start_server(plain.handle, "127.0.0.1", 0)
    tls.port = tls_server.sockets[0].getsockname()[1]
    plain.port = plain_server.sockets[0].getsockname()[1]
    request = CredentialRequest.model_validate(
        {"source": {"env": "REAL"},
         "inject": [{"hosts": [NAME, "localhost"],
                     "as": {"header": "Authorization", "format": "Bearer ${value}"}}]}
    )  # fmt: skip
    credentials, _ = plan_credentials({"KEY": request}, {"REAL": SECRET})
    instance = tmp_path / "instance"
    tenant = Tenant("inst", CompiledPolicy.of(EgressPolicy()), credentials,
                    CertificateAuthority(instance), FlowLog(instance))  # fmt: skip
    target: list[tuple[str, int]] = []
    proxy = EgressProxy(
        lambda ip: tenant, upstream_context(tmp_path / "upstream" / CA_CERT),
        destination=lambda sock: target[0], sniff_seconds=0.2,
    )  # fmt: skip
    await proxy.start("127.0.0.1", 0)
    guest_trust = ssl.create_default_context(cafile=str(tmp_path / "instance" / CA_CERT))
    yield Rig(proxy, tenant, tls, plain, guest_trust, upstream_ca, target)
    await proxy.close()
    for server in (tls_server, plain_server):
        server.close()


async def test_https_gets_the_real_header_and_the_guest_only_the_answer(rig: Rig) -> None:
    placeholder = rig.tenant.credentials[0].placeholder
    answer = await rig.request(NAME, rig.tls.port, tls=True,
                               headers=f"Authorization: Bearer {placeholder}\r\n")  # fmt: skip
    assert answer.endswith(b"ok")
    assert f"Authorization: Bearer {SECRET}" in rig.tls.heads[0]
    assert placeholder not in rig.tls.heads[0]
    assert SECRET.encode() not in answer
    (flow,) = rig.tenant.flows.read(10)
    assert (flow.protocol, flow.host, flow.action, flow.credentials) == ("tls", NAME, "allowed",
                                                                         ["KEY"])  # fmt: skip
    assert SECRET not in rig.tenant.flows.path.read_text()


async def test_every_request_of_a_keep_alive_connection_gets_the_header(rig: Rig) -> None:
    rig.target[:] = [("127.0.0.1", rig.tls.port)]
    reader, writer = await asyncio.open_connection(
        *rig.proxy.address, ssl=rig.guest_trust, server_hostname=NAME
    )
    post = f"POST /a HTTP/1.1\r\nHost: {NAME}\r\nContent-Length: 5\r\n\r\nhello"
    get = f"GET /b HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n"
    writer.write((post + get).encode())  # pipelined, the body between the heads
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.count(b"200 OK") == 2
    assert [h.split(" ", 2)[1] for h in rig.tls.heads] == ["/a", "/b"]
    assert rig.tls.heads[0].endswith("hello")
    assert all(f"Authorization: Bearer {SECRET}" in h for h in rig.tls.heads)


async def test_an_upgraded_connection_is_copied_as_it_comes(rig: Rig) -> None:
    heads: list[bytes] = []

    async def websocket_ish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
        writer.write((await reader.readexactly(9)).upper())  # frames, not HTTP
        writer.close()

    server = await asyncio.start_server(
        websocket_ish, "127.0.0.1", 0, ssl=rig.upstream_ca.server_context(NAME)
    )
    rig.target[:] = [("127.0.0.1", server.sockets[0].getsockname()[1])]
    reader, writer = await asyncio.open_connection(
        *rig.proxy.address, ssl=rig.guest_trust, server_hostname=NAME
    )
    writer.write(f"GET /ws HTTP/1.1\r\nHost: {NAME}\r\nUpgrade: x\r\n\r\n".encode())
    writer.write(b"get / x\r\n")  # as a request line it would be refused: it is payload now
    answer = await reader.read()
    writer.close()
    server.close()
    assert answer.endswith(b"\r\n\r\nGET / X\r\n")
    assert f"Authorization: Bearer {SECRET}".encode() in heads[0]


async def test_a_host_without_credentials_is_spliced_not_intercepted(rig: Rig) -> None:
    rig.target[:] = [("127.0.0.1", rig.tls.port)]
    host, port = rig.proxy.address
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname="other.example.test"
    )
    cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.write(b"GET / HTTP/1.1\r\nHost: other.example.test\r\nConnection: close\r\n\r\n")
    await reader.read()
    writer.close()
    # The upstream's own certificate (not one from the instance's CA), and no header added.
    assert b"Ember egress CA upstream" in cert
    assert "Authorization" not in rig.tls.heads[0]


async def test_refused_https_answers_403_with_the_reason(rig: Rig) -> None:
    rig.tenant.policy = CompiledPolicy.of(normalise(EgressPolicy(deny=[NAME])))
    answer = await rig.request(NAME, rig.tls.port, tls=True)
    assert answer.startswith(b"HTTP/1.1 403")
    assert f"denied by {NAME}".encode() in answer
    assert rig.tls.heads == []
    assert rig.tenant.flows.read(1)[0].action == "refused"


async def test_plain_http_injects_only_where_the_name_resolves_to_the_destination(
    rig: Rig,
) -> None:
    assert (await rig.request("localhost", rig.plain.port, tls=False)).endswith(b"ok")
    assert f"Authorization: Bearer {SECRET}" in rig.plain.heads[0]
    # api.example.test does not resolve to 127.0.0.1 here: the secret is not sent there.
    assert (await rig.request(NAME, rig.plain.port, tls=False)).endswith(b"ok")
    assert "Authorization" not in rig.plain.heads[1]


async def test_refused_tcp_is_reset(rig: Rig) -> None:
    rig.tenant.policy = CompiledPolicy.of(normalise(EgressPolicy(deny=["127.0.0.0/8"])))
    rig.target[:] = [("127.0.0.1", rig.plain.port)]
    reader, writer = await asyncio.open_connection(*rig.proxy.address)
    writer.write(b"\x00binary protocol")
    with pytest.raises(ConnectionResetError):
        await reader.read()
    flow = rig.tenant.flows.read(1)[0]
    assert (flow.protocol, flow.action) == ("tcp", "refused")
    assert "127.0.0.0/8" in flow.reason


async def test_plain_http_refusal_is_a_readable_403(rig: Rig) -> None:
    rig.tenant.policy = CompiledPolicy.of(normalise(EgressPolicy(allow=["*.allowed.test"])))
    answer = await rig.request("api.example.test", rig.plain.port, tls=False)
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"not in the allow list" in answer


def test_parse_sni_of_a_real_client_hello() -> None:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="Name.Example.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    assert parse_sni(outgoing.read()) == "name.example.test"
    assert parse_sni(b"\x16\x03\x01\x00") is None
    assert parse_sni(b"GET / HTTP/1.1\r\n") is None


def test_leaves_are_cached_within_a_bound(tmp_path: Path) -> None:
    create_ca(tmp_path, "bound")
    ca = CertificateAuthority(tmp_path)
    first = ca.server_context("a.example.test")
    assert ca.server_context("a.example.test") is first
    for i in range(MAX_LEAVES):
        ca.server_context(f"n{i}.example.test")
    assert ca.server_context("a.example.test") is not first  # evicted, made again
