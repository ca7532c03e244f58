"""An HTTPS server standing in for an external API, run by the egress VM tests inside
their namespace: `python -m tests.egress.upstream CA_DIR LOG ADDRESS...`.

It presents, for each SNI name, a certificate from the CA in CA_DIR (the proxy is told
to trust it), appends each request's Host and Authorization to LOG as a JSON line, and
answers a fixed text that never repeats the request (the guest must not see the real
value through it).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from pathlib import Path

from ember.egress.ca import CertificateAuthority

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


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
