"""Which certificate Ember's own TLS listeners serve for a name: an uploaded one that
covers it first (as Caddy), else the one Caddy stored for it or for its wildcard, read
again when the file changes; a refused handshake for a name nobody has one for."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from ember.ingress.certificates import CertificateRecord, certificate_record
from ember.ingress.termination import Terminator
from tests.groups.test_tcp import store_certificate
from tests.ukc.pem import self_signed


async def _served(terminator: Terminator, name: str) -> x509.Certificate:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=terminator.context("x.test"))
    port = server.sockets[0].getsockname()[1]
    anything = ssl.create_default_context()
    anything.check_hostname, anything.verify_mode = False, ssl.CERT_NONE
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=anything, server_hostname=name
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der)
    finally:
        server.close()


def served(terminator: Terminator, name: str) -> x509.Certificate:
    return asyncio.run(_served(terminator, name))


def test_an_upload_first_then_caddys_file_then_its_wildcard(tmp_path: Path) -> None:
    uploads: list[CertificateRecord] = []
    terminator = Terminator(tmp_path, lambda: uploads)
    stored = x509.load_pem_x509_certificate(store_certificate(tmp_path, "a.test").encode())
    assert served(terminator, "a.test") == stored
    chain, key = self_signed("a.test")
    uploads.append(certificate_record("mine", chain, key))
    assert served(terminator, "a.test") == x509.load_pem_x509_certificate(chain.encode())
    # Caddy keeps `*.b.test` under `wildcard_.b.test`.
    wildcard = store_certificate(tmp_path, "wildcard_.b.test")
    assert served(terminator, "c.b.test") == x509.load_pem_x509_certificate(wildcard.encode())


def test_a_renewed_file_is_served_and_an_unknown_name_is_refused(tmp_path: Path) -> None:
    terminator = Terminator(tmp_path, list)
    store_certificate(tmp_path, "a.test")
    before = served(terminator, "a.test")
    renewed = x509.load_pem_x509_certificate(store_certificate(tmp_path, "a.test").encode())
    assert served(terminator, "a.test") == renewed != before
    with pytest.raises(OSError):
        served(terminator, "nobody.test")
