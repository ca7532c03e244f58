"""A certificate authority per instance, and the leaf certificates it signs on demand.

Each instance gets its own CA (EC P-256, 10 years), whose certificate its guest
trusts from boot: a guest that leaks its CA's key-less certificate, or another
instance, cannot be impersonated with it. The key stays on the host (0600). A
leaf per host name is made when first needed (~1 ms) and kept in memory with its
`ssl.SSLContext`, which is what the proxy serves the guest.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
_DAY = datetime.timedelta(days=1)
MAX_LEAVES = 256  # per instance
_CA_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
    key_encipherment=False, data_encipherment=False, key_agreement=False,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ember egress"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(directory: Path, label: str) -> None:
    """Write a new CA's certificate and key (0600) into `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name(f"Ember egress CA {label}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 3650 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / CA_KEY
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_pem_key(key))
    (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class CertificateAuthority:
    """One instance's CA, loaded from its directory; signs leaves for host names."""

    def __init__(self, directory: Path) -> None:
        self.cert_pem = (directory / CA_CERT).read_bytes()
        self._cert = x509.load_pem_x509_certificate(self.cert_pem)
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / CA_KEY}: not an EC key")
        self._key = key
        self._contexts: dict[str, ssl.SSLContext] = {}

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a leaf for `host` (cached per host; a guest
        asking for endless names cannot grow the cache past MAX_LEAVES)."""
        context = self._contexts.pop(host, None) or self._make_context(host)
        self._contexts[host] = context  # most recently used last
        if len(self._contexts) > MAX_LEAVES:
            del self._contexts[next(iter(self._contexts))]
        return context

    def _make_context(self, host: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        ca_public = self._cert.public_key()
        assert isinstance(ca_public, ec.EllipticCurvePublicKey)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(host[:64]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 365 * _DAY)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_alpn_protocols(["http/1.1"])  # the proxy reads HTTP/1.x only
        # ssl loads a chain from files only: a private temporary file, removed at once.
        with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem)
            f.write(_pem_key(key))
            f.flush()
            context.load_cert_chain(f.name)
        return context
