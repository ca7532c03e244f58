"""`Discovery` on etcd 3.4 through its JSON gateway (`/v3/*`) over httpx.

Keys (prefix `/ember/` by default):
- `hosts/<name>`: `HostStatus`, under the host's lease (vanishes when it lapses);
- `inventory/<name>`: `Inventory`, no lease (a down host's instances stay known);
- `names/<name>`: `Claim`, no lease, written by a create-only transaction.

Requests go to the endpoint that last answered; on a connection error or timeout the
next one is tried, so a member cut off from the others is skipped after one timeout.
"""

from __future__ import annotations

import base64
import ssl
import time
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from ember.cluster.discovery import Claim, HostStatus, Inventory

M = TypeVar("M", bound=BaseModel)
CONNECT_TIMEOUT = 0.5


class EtcdUnavailable(Exception):
    """No endpoint answered (or the cluster lost quorum)."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def tls_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext | None:
    """TLS to `https://` etcd endpoints: the members are checked against `ca` (the system's
    CAs without it), and `cert`/`key` are this client's certificate for etcd's
    `--client-cert-auth`. None when none is given (plain HTTP, or the system's CAs)."""
    if ca is None and cert is None:
        return None
    context = ssl.create_default_context(cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _prefix_end(prefix: str) -> str:
    """The first key after every key starting with `prefix` (etcd's range_end)."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


class Etcd:
    def __init__(
        self,
        endpoints: list[str],
        *,
        prefix: str = "/ember/",
        timeout: float = 1.5,
        tls: ssl.SSLContext | None = None,
    ):
        if not endpoints:
            raise ValueError("etcd: no endpoints")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = prefix
        # Connecting is quick on the private network etcd lives on: a member that does not
        # take the connection at once is cut off, and the next one is tried.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT), verify=tls or True
        )
        self._lease: int | None = None

    # ---- transport ----

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to `/v3/<path>` on the first endpoint that answers."""
        errors: list[str] = []
        for endpoint in list(self.endpoints):
            try:
                response = await self._http.post(f"{endpoint}/v3/{path}", json=body)
            except (httpx.HTTPError, ssl.SSLError) as exc:
                # An SSLError: a member refusing our certificate (with TLS 1.3 its alert
                # may come after the handshake, on the first read, not wrapped by httpx).
                errors.append(f"{endpoint}: {exc!r}")
                # The next call starts with the next member.
                self.endpoints.remove(endpoint)
                self.endpoints.append(endpoint)
                continue
            answer: dict[str, Any] = response.json()
            if response.status_code != 200:
                raise EtcdUnavailable(f"{endpoint}: {answer.get('message', response.text)}")
            return answer
        raise EtcdUnavailable("; ".join(errors))

    async def _range(self, prefix: str) -> list[dict[str, Any]]:
        key = self.prefix + prefix
        answer = await self.call("kv/range", {"key": _b64(key), "range_end": _prefix_end(key)})
        kvs: list[dict[str, Any]] = answer.get("kvs", [])
        return kvs

    async def _get(self, key: str) -> dict[str, Any] | None:
        answer = await self.call("kv/range", {"key": _b64(self.prefix + key)})
        kvs: list[dict[str, Any]] = answer.get("kvs", [])
        return kvs[0] if kvs else None

    async def _put(self, key: str, value: BaseModel, lease: int | None = None) -> None:
        body: dict[str, Any] = {
            "key": _b64(self.prefix + key),
            "value": _b64(value.model_dump_json()),
        }
        if lease is not None:
            body["lease"] = str(lease)
        await self.call("kv/put", body)

    def _decoded(self, kvs: list[dict[str, Any]], model: type[M], strip: str) -> dict[str, M]:
        out: dict[str, M] = {}
        for kv in kvs:
            key = base64.b64decode(kv["key"]).decode().removeprefix(self.prefix + strip)
            out[key] = model.model_validate_json(base64.b64decode(kv["value"]))
        return out

    # ---- host side ----

    async def register(self, status: HostStatus, ttl: int) -> None:
        lease = await self.call("lease/grant", {"TTL": str(ttl)})
        self._lease = int(lease["ID"])
        await self._put(f"hosts/{status.name}", status.model_copy(update={"ttl": ttl}), self._lease)

    async def keepalive(self) -> bool:
        if self._lease is None:
            return False
        answer = await self.call("lease/keepalive", {"ID": str(self._lease)})
        # A lease that expired answers without a TTL.
        alive = int(answer.get("result", {}).get("TTL", 0)) > 0
        if not alive:
            self._lease = None
        return alive

    async def publish(self, status: HostStatus, inventory: Inventory | None) -> None:
        if self._lease is None:
            raise EtcdUnavailable("not registered")
        await self._put(f"hosts/{status.name}", status, self._lease)
        if inventory is not None:
            await self._put(f"inventory/{inventory.name}", inventory)

    async def withdraw(self) -> None:
        if self._lease is not None:
            lease, self._lease = self._lease, None
            await self.call("lease/revoke", {"ID": str(lease)})

    # ---- readers ----

    async def live_hosts(self) -> dict[str, HostStatus]:
        return self._decoded(await self._range("hosts/"), HostStatus, "hosts/")

    async def inventories(self) -> dict[str, Inventory]:
        return self._decoded(await self._range("inventory/"), Inventory, "inventory/")

    # ---- names ----

    async def claim(self, name: str, host: str) -> Claim | None:
        key = _b64(f"{self.prefix}names/{name}")
        claim = Claim(host=host, at=time.time())
        answer = await self.call(
            "kv/txn",
            {
                "compare": [{"key": key, "target": "CREATE", "create_revision": "0"}],
                "success": [{"requestPut": {"key": key, "value": _b64(claim.model_dump_json())}}],
            },
        )
        if not answer.get("succeeded"):
            return None
        return claim.model_copy(update={"revision": int(answer["header"]["revision"])})

    async def claims(self) -> dict[str, Claim]:
        kvs = await self._range("names/")
        found = self._decoded(kvs, Claim, "names/")
        for kv, name in zip(kvs, found, strict=True):
            found[name].revision = int(kv["mod_revision"])
        return found

    async def claim_of(self, name: str) -> Claim | None:
        kv = await self._get(f"names/{name}")
        if kv is None:
            return None
        claim = Claim.model_validate_json(base64.b64decode(kv["value"]))
        claim.revision = int(kv["mod_revision"])
        return claim

    async def release(self, name: str, claim: Claim) -> bool:
        key = _b64(f"{self.prefix}names/{name}")
        compare = {"key": key, "target": "MOD", "mod_revision": str(claim.revision)}
        answer = await self.call(
            "kv/txn", {"compare": [compare], "success": [{"requestDeleteRange": {"key": key}}]}
        )
        return bool(answer.get("succeeded"))

    async def close(self) -> None:
        await self._http.aclose()
