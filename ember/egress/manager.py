"""EgressManager: the mediated instances, their rules, and the one proxy.

State per instance in `<data_dir>/egress/<id>/` (directory 0700):
`state.json` (0600: the policy, and credentials with their real values),
`ca.pem`, `ca.key` (0600) and `flows.jsonl`. The instance record never holds a
real value, so neither its answer nor a snapshot's metadata can.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import threading
from pathlib import Path
from typing import Protocol

from ember.egress import nft
from ember.egress.ca import CA_CERT, CertificateAuthority, create_ca
from ember.egress.credentials import check_value
from ember.egress.flows import Flow, FlowLog
from ember.egress.models import EgressPlan, EgressView
from ember.egress.policy import CompiledPolicy, EgressPolicy, normalise
from ember.egress.proxy import EgressProxy, Tenant
from ember.errors import InvalidArgument, NotFound, Unavailable
from ember.network import Lease, NetworkSettings

log = logging.getLogger("ember.egress")
STATE = "state.json"


def upstream_context(cafile: Path | None) -> ssl.SSLContext:
    """How the proxy verifies the servers it intercepts: the host's trust store, plus
    `cafile` (private CAs; tests)."""
    context = ssl.create_default_context()
    if cafile is not None:
        context.load_verify_locations(cafile=str(cafile))
    context.set_alpn_protocols(["http/1.1"])
    return context


class Leases(Protocol):
    """What egress needs of the network (`NetworkManager` is one): its settings and the
    guests' addresses and TAPs."""

    settings: NetworkSettings

    def lease(self, instance_id: str) -> Lease | None: ...


class EgressManager:
    def __init__(
        self,
        data_dir: Path,
        network: Leases,
        *,
        proxy_port: int,
        upstream_cafile: Path | None = None,
    ) -> None:
        self.root = data_dir / "egress"
        self.network = network
        self.proxy_port = proxy_port
        self.table = network.settings.egress_table
        self.proxy = EgressProxy(self._tenant, upstream_context(upstream_cafile))
        self._plans: dict[str, EgressPlan] = {}
        self._tenants: dict[str, Tenant] = {}  # by guest IP
        self._lock = threading.RLock()

    # ---- server lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        """Load every mediated instance, start the proxy, install the rules."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in sorted(self.root.iterdir()):
            try:
                plan = EgressPlan.model_validate_json((directory / STATE).read_text())
            except (OSError, ValueError):
                log.warning("egress: unreadable state in %s; ignored", directory)
                continue
            self._plans[directory.name] = plan
        gateway = str(self.network.settings.gateway_ip)
        try:
            await self.proxy.start(gateway, self.proxy_port)
        except OSError as exc:
            raise Unavailable(
                f"egress: the proxy cannot listen on {gateway}:{self.proxy_port} ({exc}); "
                "set EMBER_EGRESS_PROXY_PORT"
            ) from exc
        self._apply()

    async def close(self) -> None:
        """Stop the proxy. The rules stay: a mediated guest's connections are then reset
        by the host (nothing listens), never let through unjudged."""
        await self.proxy.close()

    # ---- instances (the instance resource calls these) -----------------------------

    def create(self, instance_id: str, plan: EgressPlan) -> None:
        """State, CA and rules for a new instance; on failure, none of them is left."""
        directory = self._dir(instance_id)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            create_ca(directory, instance_id)
            with self._lock:
                self._write(instance_id, plan)
                self._plans[instance_id] = plan
                self._apply()
        except BaseException:
            self.remove(instance_id)
            raise

    def remove(self, instance_id: str) -> None:
        with self._lock:
            known = self._plans.pop(instance_id, None) is not None
            shutil.rmtree(self._dir(instance_id), ignore_errors=True)
            if known:
                self._apply()

    def sweep(self, live_ids: set[str]) -> None:
        for instance_id in list(self._plans):
            if instance_id not in live_ids:
                self.remove(instance_id)

    def ca_pem(self, instance_id: str) -> str | None:
        """The CA the instance's guest trusts; None when it is not mediated."""
        if instance_id not in self._plans:
            return None
        return (self._dir(instance_id) / CA_CERT).read_text()

    # ---- the API's -----------------------------------------------------------------

    def view(self, instance_id: str) -> EgressView:
        ca = self.ca_pem(instance_id)
        if ca is None:
            raise _not_mediated(instance_id)
        return EgressView.of(self._plans[instance_id], ca)

    def set_policy(self, instance_id: str, policy: EgressPolicy) -> EgressView:
        """Replace the policy; it holds from the next connection (open ones go on)."""
        checked = normalise(policy)
        with self._lock:
            plan = self._plan(instance_id).model_copy(update={"policy": checked})
            self._write(instance_id, plan)
            self._plans[instance_id] = plan
            self._apply()
        return self.view(instance_id)

    def check_rotation(self, instance_id: str, env: dict[str, str]) -> None:
        """PATCH `env`: only the real values of this instance's credentials."""
        plan = self._plans.get(instance_id)
        bound = {c.source_env for c in plan.credentials} if plan else set()
        for name, value in env.items():
            if name not in bound:
                raise InvalidArgument(
                    f"env.{name}: only env named by this instance's credentials "
                    f"(source.env) can be updated; bound: {sorted(bound) or 'none'}"
                )
            check_value(name, value)

    def rotate(self, instance_id: str, env: dict[str, str]) -> None:
        self.check_rotation(instance_id, env)
        with self._lock:
            plan = self._plan(instance_id)
            credentials = [
                c.model_copy(update={"value": env.get(c.source_env, c.value)})
                for c in plan.credentials
            ]
            plan = plan.model_copy(update={"credentials": credentials})
            self._write(instance_id, plan)
            self._plans[instance_id] = plan
            self._apply()

    def flows(self, instance_id: str, limit: int) -> list[Flow]:
        self._plan(instance_id)
        return FlowLog(self._dir(instance_id)).read(limit)

    # ---- inside ----------------------------------------------------------------------

    def _plan(self, instance_id: str) -> EgressPlan:
        plan = self._plans.get(instance_id)
        if plan is None:
            raise _not_mediated(instance_id)
        return plan

    def _dir(self, instance_id: str) -> Path:
        return self.root / instance_id

    def _write(self, instance_id: str, plan: EgressPlan) -> None:
        path = self._dir(instance_id) / STATE
        tmp = path.with_name(STATE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(plan.model_dump_json())
        os.replace(tmp, path)

    def _tenant(self, ip: str) -> Tenant | None:
        return self._tenants.get(ip)

    def _apply(self) -> None:
        """Rebuild the proxy's tenants and the nftables rules from every plan."""
        with self._lock:
            tenants: dict[str, Tenant] = {}
            rules: list[nft.GuestRules] = []
            for instance_id, plan in self._plans.items():
                lease = self.network.lease(instance_id)
                if lease is None:
                    continue
                policy = CompiledPolicy.of(plan.policy)
                directory = self._dir(instance_id)
                old = self._tenants.get(lease.ip)
                ca = old.ca if old and old.instance_id == instance_id else None
                tenants[lease.ip] = Tenant(
                    instance_id, policy, plan.credentials,
                    ca or CertificateAuthority(directory), FlowLog(directory),
                )  # fmt: skip
                rules.append(nft.GuestRules(lease.ip, lease.tap, plan.mode, policy))
            s = self.network.settings
            site = nft.Site(self.table, s.bridge, s.subnet, str(s.gateway_ip), self.proxy_port)
            nft.apply(nft.ruleset(site, rules))
            self._tenants = tenants


def _not_mediated(instance_id: str) -> NotFound:
    return NotFound(
        f"instance {instance_id} has no mediated egress (create it with network.egress "
        "enabled, credentials or a policy)",
        code="egress_not_enabled",
    )
