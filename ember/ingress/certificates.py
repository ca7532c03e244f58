"""Uploaded TLS certificates: a PEM chain and its private key, checked before Caddy
ever sees them (parse, the key matches the leaf, valid now), then served by Caddy
(`load_pem`) for the names the leaf covers instead of an issued certificate."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from pydantic import Field

from ember.errors import InvalidArgument
from ember.ids import new_id
from ember.images.models import utcnow
from ember.store import StoredRecord

PUBLIC = serialization.PublicFormat.SubjectPublicKeyInfo
DER = serialization.Encoding.DER


class CertificateRecord(StoredRecord):
    chain: str  # PEM, leaf first
    key: str  # PEM private key (the store is the data dir's: root's, as the JWT secret)
    common_name: str
    domains: list[str]  # the leaf's DNS names (its SANs, or its CN when it has none)
    subject: str
    issuer: str
    serial_number: str
    not_before: datetime
    not_after: datetime
    created_at: datetime = Field(default_factory=utcnow)


def certificate_record(
    name: str, chain: str, key: str, *, id: str | None = None, now: datetime | None = None
) -> CertificateRecord:
    """The record of a valid upload; every refusal says which check failed."""
    try:
        certs = x509.load_pem_x509_certificates(chain.encode())
    except ValueError as exc:
        raise InvalidArgument(f"chain: not a PEM certificate chain ({exc})",
                              code="invalid_certificate") from exc  # fmt: skip
    try:
        private = serialization.load_pem_private_key(key.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"pkey: not an unencrypted PEM private key ({exc})",
                              code="invalid_certificate") from exc  # fmt: skip
    if not isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                                ed25519.Ed25519PrivateKey)):  # fmt: skip
        raise InvalidArgument("pkey: RSA, ECDSA or Ed25519 keys only", code="invalid_certificate")
    leaf = certs[0]
    mine = private.public_key().public_bytes(DER, PUBLIC)
    if mine != leaf.public_key().public_bytes(DER, PUBLIC):
        raise InvalidArgument("pkey: the key does not match the chain's first certificate",
                              code="key_mismatch")  # fmt: skip
    now = now or datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise InvalidArgument(
            f"chain: the certificate is valid from {leaf.not_valid_before_utc.isoformat()} to "
            f"{leaf.not_valid_after_utc.isoformat()}, not now", code="certificate_expired",
        )  # fmt: skip
    common = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(common[0].value) if common else ""
    domains = _dns_names(leaf) or ([cn] if cn else [])
    if not domains:
        raise InvalidArgument("chain: the certificate names no domain (no SAN, no CN)",
                              code="invalid_certificate")  # fmt: skip
    return CertificateRecord(
        id=id or new_id(), name=name, chain=chain, key=key, common_name=cn, domains=domains,
        subject=leaf.subject.rfc4514_string(), issuer=leaf.issuer.rfc4514_string(),
        serial_number=format(leaf.serial_number, "x"), not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )  # fmt: skip


def _dns_names(leaf: x509.Certificate) -> list[str]:
    try:
        extension = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(extension.value.get_values_for_type(x509.DNSName))


def covers(domains: list[str], subject: str) -> bool:
    """Whether a certificate for `domains` serves `subject` (`*.a.b` covers `x.a.b`)."""
    for domain in domains:
        if domain == subject:
            return True
        if domain.startswith("*.") and subject.count(".") == domain.count(".") \
                and subject.endswith(domain[1:]):  # fmt: skip
            return True
    return False
