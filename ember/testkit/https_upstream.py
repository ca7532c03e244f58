"""An HTTPS server standing in for an external API, run by the egress VM test and bench
inside their namespace: `python -m ember.testkit.https_upstream CA_DIR LOG ADDRESS...`.

It presents, for each SNI name, a certificate from the CA in CA_DIR (the proxy is told
to trust it), appends each request's Host and Authorization to LOG as a JSON line, and
answers a fixed text that never repeats the request (the guest must not see the real
value through it).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ember.egress.ca import CertificateAuthority, create_ca

ANSWER = b"hello from upstream\n"


def tls_context(ca: CertificateAuthority) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def choose(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        sock.context = ca.server_context(name or "unnamed")

    context.sni_callback = choose
    return context


async def serve(ca_dir: Path, log: Path, addresses: list[str]) -> None:
    ca = CertificateAuthority(ca_dir)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)
            )
            seen = {"host": fields.get("host"), "authorization": fields.get("authorization")}
            with log.open("a") as f:
                f.write(json.dumps(seen) + "\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(ANSWER)
                + ANSWER
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    servers = []
    for address in addresses:
        host, port = address.rsplit(":", 1)
        servers.append(await asyncio.start_server(handle, host, int(port), ssl=tls_context(ca)))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


@contextmanager
def https_upstream(ns: str, work: Path, addresses: list[str]) -> Iterator[tuple[Path, Path]]:
    """This server in namespace `ns`, on port 443 of each of `addresses` (added to its
    loopback: guests reach them through the host); yields its CA directory and its log."""
    create_ca(work / "ca", "upstream")
    log = work / "requests.jsonl"
    for address in addresses:
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "ember.testkit.https_upstream",
         str(work / "ca"), str(log), *(f"{a}:443" for a in addresses)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the HTTPS upstream did not start")
        yield work / "ca", log
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
