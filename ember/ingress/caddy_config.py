"""The whole Caddy JSON config, built from every ingress at once (POSTed to `/load`).

One HTTP server per listen port. Per server, routes go: literal hostnames, then
patterns (the more fixed text, the earlier), then a 404 for hosts no rule names.
Upstreams are resolved per request by Caddy's `a` dynamic upstream source against
Ember's DNS responder, so an instance that changes address keeps its route.
Automatic HTTPS is off everywhere: which ports speak TLS, which names get which
issuer and where port 80 redirects are all decided here, explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.ingress.certificates import CertificateRecord, covers
from ember.ingress.hostnames import Hostname, parse_target
from ember.ingress.models import DEFAULT_HTTP_PORT, DEFAULT_HTTPS_PORT, IngressRecord, IngressRule

JSON = dict[str, Any]
TEXT = {"Content-Type": ["text/plain; charset=utf-8"]}
REGEXP_NAME = "ingress"  # placeholders read {http.regexp.ingress.<capture>}
# How often Caddy re-resolves an instance name: an address change is seen within this.
DNS_REFRESH = "1s"
# How long Caddy keeps an idle connection to an instance. Caddy's default is 2 min, and
# Go's transport pools even a connection whose dial finished after its request was
# cancelled, one that never carries a request: a one-connection-at-a-time guest server
# (the testkit's hello, many small apps) then sits in read() on it and answers nobody
# else, measured here for the whole 2 min. 1 s bounds that, still reuses connections
# under load (reuse happens within milliseconds), stays under the idle timeouts of
# common servers (gunicorn 2 s, Node 5 s) so a pooled connection is not one the
# instance is closing, and lets an idle instance's connections go (auto-standby).
UPSTREAM_IDLE_TIMEOUT = "1s"
# Caddy's own defaults, restated because giving `keep_alive` at all replaces them.
UPSTREAM_MAX_IDLE_PER_HOST = 32
UPSTREAM_PROBE_INTERVAL = "30s"


@dataclass(frozen=True)
class ProxySettings:
    admin_socket: Path
    storage_dir: Path
    listen_address: str = "0.0.0.0"
    dns_domain: str = "ember.internal"
    dns_resolver: str = "127.0.0.1:4953"
    dial_timeout_seconds: float = 2.0
    acme_email: str | None = None
    acme_domain: str | None = None
    acme_ca: str | None = None

    def uses_acme(self, subject: str) -> bool:
        domain = self.acme_domain
        if not (self.acme_email and domain):
            return False
        bare = subject.removeprefix("*.")
        return bare == domain or bare.endswith("." + domain)


@dataclass(frozen=True)
class PublishedRoutes:
    """Routes another domain (service groups) serves through the same Caddy: they go
    before the ingress rules of `port`, and `error_routes` before the ingress' own.
    `port` None: no routes, only `tls_subjects` for Caddy to keep certificates of (a
    listener of Ember's own terminates TLS with them: `termination.py`)."""

    port: int | None
    routes: list[JSON]
    error_routes: list[JSON]
    tls_subjects: tuple[str, ...] = ()


def base_config(settings: ProxySettings) -> JSON:
    """What every config has: the admin socket, storage and a CA that is not installed."""
    return {
        "admin": {"listen": f"unix/{settings.admin_socket}", "config": {"persist": False}},
        "storage": {"module": "file_system", "root": str(settings.storage_dir)},
        "apps": {
            # Never touch the host's trust store: clients fetch the root from the API.
            "pki": {
                "certificate_authorities": {
                    "local": {"name": "Ember Ingress CA", "install_trust": False}
                }
            }
        },
    }


def build_config(
    records: Iterable[IngressRecord],
    settings: ProxySettings,
    published: Sequence[PublishedRoutes] = (),
    certificates: Sequence[CertificateRecord] = (),
) -> JSON:
    rules = [rule for record in records for rule in record.rules]
    config = base_config(settings)
    ports = {rule.listen_port for rule in rules} | _redirect_ports(rules)
    ports |= {p.port for p in published if p.port is not None}
    servers = {
        f"ingress-{port}": _server(port, rules, settings, [p for p in published if p.port == port])
        for port in sorted(ports)
    }
    config["apps"]["http"] = {"servers": servers}
    subjects = sorted(set(_tls_subjects(rules)) | {s for p in published for s in p.tls_subjects})
    # A name an uploaded certificate covers is served with it, never issued one.
    subjects = [s for s in subjects if not any(covers(c.domains, s) for c in certificates)]
    if subjects or certificates:
        config["apps"]["tls"] = _tls_app(subjects, settings)
    if certificates:
        config["apps"]["tls"]["certificates"]["load_pem"] = [
            {"certificate": c.chain, "key": c.key, "tags": [f"ember-{c.id}"]} for c in certificates
        ]
    return config


def _redirect_ports(rules: list[IngressRule]) -> set[int]:
    return {DEFAULT_HTTP_PORT} if any(rule.redirect_http for rule in rules) else set()


def route_order(rule: IngressRule) -> tuple[int, int]:
    """Literal hostnames first, then patterns with more fixed text first, then any host."""
    hostname = rule.hostname
    kind = 2 if hostname.is_any else 1 if hostname.is_pattern else 0
    return (kind, -hostname.literal_length)


def _server(
    port: int, rules: list[IngressRule], settings: ProxySettings, published: list[PublishedRoutes]
) -> JSON:
    served = sorted((r for r in rules if r.listen_port == port), key=route_order)
    redirects = [r for r in rules if r.redirect_http and port == DEFAULT_HTTP_PORT]
    routes = [route for p in published for route in p.routes]
    routes += [route for rule in served for route in _rule_routes(rule, settings)]
    routes += [_redirect_route(rule) for rule in sorted(redirects, key=route_order)]
    routes.append(_static(404, f"ember ingress: no rule for {{http.request.host}} on port {port}"))
    server: JSON = {
        "listen": [_listen(settings.listen_address, port)],
        "automatic_https": {"disable": True},
        "routes": routes,
        "errors": {"routes": [*(r for p in published for r in p.error_routes), _upstream_error()]},
    }
    if any(rule.tls for rule in served) or any(p.tls_subjects for p in published):
        server["tls_connection_policies"] = [{}]
    return server


def _listen(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _host_matcher(hostname: Hostname) -> JSON:
    if hostname.is_any:
        return {}  # a matcher set with no matchers matches every request
    if not hostname.is_pattern:
        return {"host": [hostname.text]}
    regexp = {"name": REGEXP_NAME, "pattern": hostname.regexp}
    return {"vars_regexp": {"{http.request.host}": regexp}}


def _rule_routes(rule: IngressRule, settings: ProxySettings) -> list[JSON]:
    match = _host_matcher(rule.hostname)
    proxy = _reverse_proxy(rule, settings)
    auth = rule.request_header_auth
    if auth is None:
        return [{"match": [match], "handle": [proxy], "terminal": True}]
    # The secret header opens the route and is stripped: the instance never sees it.
    strip = {"handler": "headers", "request": {"delete": [auth.header]}}
    allowed = {**match, "header": {auth.header: [auth.value]}}
    return [
        {"match": [allowed], "handle": [strip, proxy], "terminal": True},
        {
            "match": [match],
            "handle": [_static_handler(403, "ember ingress: forbidden (request header auth)")],
            "terminal": True,
        },
    ]


def _reverse_proxy(rule: IngressRule, settings: ProxySettings) -> JSON:
    target = parse_target(rule.target.instance, rule.hostname)
    return {
        "handler": "reverse_proxy",
        "dynamic_upstreams": {
            "source": "a",
            "name": target.dns_name(settings.dns_domain, REGEXP_NAME),
            "port": str(rule.target.port),
            "refresh": DNS_REFRESH,
            "resolver": {"addresses": [f"udp/{settings.dns_resolver}"]},
            "dial_timeout": _duration(settings.dial_timeout_seconds),
        },
        # A stopped or deleted instance must fail the request at once, not hang it.
        "transport": {
            "protocol": "http",
            "dial_timeout": _duration(settings.dial_timeout_seconds),
            "keep_alive": {
                "idle_timeout": UPSTREAM_IDLE_TIMEOUT,
                "max_idle_conns_per_host": UPSTREAM_MAX_IDLE_PER_HOST,
                "probe_interval": UPSTREAM_PROBE_INTERVAL,
            },
        },
    }


def _redirect_route(rule: IngressRule) -> JSON:
    port = rule.listen_port
    authority = "{http.request.host}" + ("" if port == DEFAULT_HTTPS_PORT else f":{port}")
    location = f"https://{authority}{{http.request.uri}}"
    handler = {
        "handler": "static_response",
        "status_code": 308,
        "headers": {"Location": [location]},
    }
    return {"match": [_host_matcher(rule.hostname)], "handle": [handler], "terminal": True}


def _upstream_error() -> JSON:
    """What a request gets when its instance cannot be reached: the status and why."""
    return _static(
        "{http.error.status_code}",
        "ember ingress: instance unavailable for {http.request.host} "
        "({http.error.status_code} {http.error.status_text}): "
        "it is stopped, deleted or not listening on the target port",
    )


def _static(status: int | str, body: str) -> JSON:
    return {"handle": [_static_handler(status, body)], "terminal": True}


def _static_handler(status: int | str, body: str) -> JSON:
    return {
        "handler": "static_response",
        "status_code": status,
        "headers": TEXT,
        "body": body + "\n",
        "close": False,
    }


def _tls_subjects(rules: list[IngressRule]) -> list[str]:
    subjects = set()
    for rule in rules:
        if rule.tls:
            hostname = rule.hostname
            subject = hostname.wildcard if hostname.is_pattern else hostname.text
            if subject:
                subjects.add(subject)
    return sorted(subjects)


def _tls_app(subjects: list[str], settings: ProxySettings) -> JSON:
    acme = [s for s in subjects if settings.uses_acme(s)]
    internal = [s for s in subjects if not settings.uses_acme(s)]
    policies: list[JSON] = []
    if acme:
        issuer: JSON = {"module": "acme", "email": settings.acme_email}
        if settings.acme_ca:
            issuer["ca"] = settings.acme_ca
        policies.append({"subjects": acme, "issuers": [issuer]})
    if internal:
        policies.append({"subjects": internal, "issuers": [{"module": "internal"}]})
    certificates: JSON = {"automate": subjects} if subjects else {}
    return {"certificates": certificates, "automation": {"policies": policies}}


def internal_subjects(config: JSON) -> list[str]:
    """Names the internal CA issues certificates for in `config`."""
    policies = config["apps"].get("tls", {}).get("automation", {}).get("policies", [])
    return [
        subject
        for policy in policies
        if policy["issuers"][0]["module"] == "internal"
        for subject in policy["subjects"]
    ]


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


__all__ = [
    "DEFAULT_HTTPS_PORT",
    "ProxySettings",
    "PublishedRoutes",
    "base_config",
    "build_config",
    "internal_subjects",
    "route_order",
]
