"""TLS for listeners other than Caddy's (a service group's TLS-terminated TCP service):
the certificate for the name the client asks for (SNI, else the listener's own name),
with the same precedence as Caddy's HTTPS: an uploaded certificate that covers the
name, else the one Caddy issued for it and keeps in its storage.

Caddy stays the one certificate manager (internal CA or ACME, renewals): the names are
handed to it as subjects without a port, and what it stores is read here. A stored
file that changed (a renewal) is read again at the next handshake; a name with no
certificate yet fails the handshake with `unrecognized_name`, as Caddy does.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

from ember.ingress.certificates import CertificateRecord, covers

log = logging.getLogger(__name__)
Uploaded = Callable[[], list[CertificateRecord]]


class Terminator:
    """Server-side TLS contexts whose certificate is picked per handshake."""

    def __init__(self, storage_dir: Path, uploaded: Uploaded) -> None:
        self._storage = storage_dir / "certificates"
        self._uploaded = uploaded
        # name -> (what it was loaded from, the context holding that certificate)
        self._loaded: dict[str, tuple[object, ssl.SSLContext]] = {}

    def context(self, default_name: str) -> ssl.SSLContext:
        """A listener's context: the client's SNI name, else `default_name`."""
        listener = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

        def pick(connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
            chosen = self.certificate_context((name or default_name).lower())
            if chosen is None:
                log.warning("tls: no certificate for %r yet", name or default_name)
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            connection.context = chosen
            return None

        listener.sni_callback = pick
        return listener

    def certificate_context(self, name: str) -> ssl.SSLContext | None:
        upload = next((c for c in self._uploaded() if covers(c.domains, name)), None)
        if upload is not None:
            return self._cached(name, (upload.id, upload.chain), lambda: _from_pem(upload))
        stored = self._stored(name)
        if stored is None:
            return None
        crt, key = stored
        return self._cached(name, (crt, crt.stat().st_mtime_ns), lambda: _from_files(crt, key))

    def _stored(self, name: str) -> tuple[Path, Path] | None:
        """Caddy's files for `name`, or for the wildcard one level up (any issuer)."""
        subjects = [name.replace("*", "wildcard_")]
        if "." in name:
            subjects.append(f"wildcard_.{name.partition('.')[2]}")
        for subject in subjects:
            for crt in sorted(self._storage.glob(f"*/{subject}/{subject}.crt")):
                if (key := crt.with_suffix(".key")).exists():
                    return crt, key
        return None

    def _cached(
        self, name: str, source: object, load: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        known = self._loaded.get(name)
        if known is None or known[0] != source:
            known = (source, load())
            self._loaded[name] = known
        return known[1]


def _from_files(crt: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    return context


def _from_pem(record: CertificateRecord) -> ssl.SSLContext:
    """`ssl` loads certificates from files only: a private (0700) one, removed at once."""
    with tempfile.TemporaryDirectory(prefix="ember-tls-") as scratch:
        crt, key = Path(scratch, "chain.pem"), Path(scratch, "key.pem")
        crt.write_text(record.chain)
        key.write_text(record.key)
        return _from_files(crt, key)


__all__ = ["Terminator"]
