"""`ember gateway`: one Hypeman-compatible endpoint in front of many Ember hosts.

Stateless: membership, liveness and name claims live in the `Discovery` store; the
only memory of a gateway is a cache of which host holds which instance (a hint,
checked against the claims and hosts) and its own recent placements. Run several.

Routes:
- `POST /instances`: rank the live hosts (`placement`), claim the name, forward; a
  host's 429/503 (or no answer) releases the claim and the next host is tried.
- `/instances/{ref}[/...]` and the exec/cp WebSockets: proxied to the owning host,
  bodies and answers streamed (SSE logs included). On a down host, `GET` answers the
  last published summary with state `Unknown`; anything else is 503 `host_unavailable`.
- `GET /instances` (and every other list): the live hosts' lists merged, plus the down
  hosts' instances as `Unknown`.
- `/images`: a pull or delete goes to every live host (each host runs from its own
  image cache); an image reads as its least-ready copy, so `ready` means ready on all.
  An image pushed to one host's registry reaches the others by a pull through the
  gateway of `<that host's address>/<repo>:<tag>`, with the caller's token.
- `/v2/`: one registry for the cluster; a push lands on the repository's host and
  every other live host then pulls the tag (`registry`).
- `GET /resources`: the live hosts' figures summed, each host's beside them.
- Anything else (`/volumes`, `/snapshots`, `/ingresses`): an item is
  proxied to the host that has it; a create goes to the host named by the
  `X-Ember-Host` header, or else the first live host by name.
- `GET /cluster/hosts`: the hosts, their liveness, capacity and instances.

Auth: the gateway checks the bearer token with the cluster's shared JWT secret, then
forwards it unchanged; hosts hold the same secret, so they accept it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import websockets
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ember.api.auth import bearer_token, registry_token, verify_token
from ember.api.errors import oci_error
from ember.cluster.discovery import Discovery, HostStatus, Inventory, heard_from
from ember.cluster.etcd import EtcdUnavailable
from ember.cluster.placement import Recent, Want, rank
from ember.errors import EmberError, InvalidArgument
from ember.images.reference import parse_reference
from ember.tasks import PeriodicTask
from ember.units import parse_size

log = logging.getLogger("ember.cluster")
HOST_HEADER = "X-Ember-Host"  # on answers: the host that served; on creates: where to
# Live hosts are re-read at most this often (their heartbeats are judged at each use). A
# running gateway re-reads them in the background twice as often, so a request never
# waits on that read, nor on a new connection to etcd (the reads keep one open).
HOSTS_FRESH_SECONDS = 0.5
REFUSALS = (429, 503)
# Connections to hosts stay open this long idle: a new one cost 7.5 ms here against 3.4 for
# a request on an open one (loaded machine), and creates come seconds apart. Hosts keep
# theirs open longer (`ember serve`'s `timeout_keep_alive`), so it is always the gateway
# that closes one, never a host closing one the gateway is just reusing.
HOST_KEEPALIVE_SECONDS = 60.0
# A host asked to pull a pushed tag answers at once (the pull runs after); a push does
# not wait longer than this on a host that does not.
PULL_TIMEOUT = 10.0
_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade"}
_SUMMED_FIELDS = ("capacity", "effective_limit", "allocated", "available")
# `/v2/` paths: `<repo>/(blobs|manifests|tags)/...` (a repository name may hold slashes).
_REPOSITORY = re.compile(r"^(.+)/(?:blobs|manifests|tags)/")
_MANIFEST = re.compile(r"^(.+)/manifests/([^/]+)$")
_IMAGE_READINESS = {"failed": 0, "pending": 1, "pulling": 2, "converting": 3, "ready": 4}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


class HostDown(EmberError):
    status = 503
    code = "host_unavailable"


class Gateway:
    def __init__(
        self,
        discovery: Discovery,
        secret: bytes,
        *,
        lease_ttl: float = 5,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.discovery = discovery
        self.secret = secret
        # No overall timeout: logs follow and long creates stream as long as they take.
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=2.0),
            # No cap on connections: each followed log holds one for as long as it follows.
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=20,
                keepalive_expiry=HOST_KEEPALIVE_SECONDS,
            ),
        )
        self.recent = Recent(window=2 * lease_ttl)
        self.owners: dict[str, str] = {}  # instance id -> host name
        self._hosts: tuple[float, dict[str, HostStatus]] = (0.0, {})
        self._refresher = PeriodicTask(
            "live hosts", self._refresh_quietly, HOSTS_FRESH_SECONDS / 2, log=log
        )

    # ---- membership ----

    async def live(self, reread: bool = False) -> dict[str, HostStatus]:
        """Hosts with a lease that are not silently behind the others (`heard_from`): a host
        cut off reads down within its TTL even before etcd expires its lease."""
        at, hosts = self._hosts
        if reread or time.monotonic() - at > HOSTS_FRESH_SECONDS:
            hosts = await self._refresh()
        return heard_from(hosts, time.time())

    async def _refresh(self) -> dict[str, HostStatus]:
        hosts = await self.discovery.live_hosts()
        self._hosts = (time.monotonic(), hosts)
        return hosts

    async def _refresh_quietly(self) -> None:
        """The background pass: etcd out of reach is not logged here four times a second;
        the cache ages past `HOSTS_FRESH_SECONDS` and a request reads (and reports) it."""
        with contextlib.suppress(EtcdUnavailable):
            await self._refresh()

    async def owner(self, ref: str, authorization: str) -> str | None:
        """The name of the host holding instance `ref` (live or not), or None; the
        caller's `authorization` goes with a question to the hosts. Only ids are cached:
        a name may be freed and claimed on another host through another gateway."""
        if ref in self.owners:
            return self.owners[ref]
        claim = await self.discovery.claim_of(ref)
        if claim is not None:
            return claim.host
        for inventory in (await self.discovery.inventories()).values():
            found = next((i for i in inventory.instances if ref in (i.id, i.name)), None)
            if found is not None:
                if found.id == ref:
                    self.owners[ref] = inventory.name
                return inventory.name
        # Made since the last publish (or named before its host joined): ask the hosts.
        return await self._holder(f"/instances/{ref}", {"Authorization": authorization})

    async def _holder(self, path: str, headers: dict[str, str] | None = None) -> str | None:
        """The first live host that answers 200 to `GET path`."""
        hosts = list((await self.live()).values())

        async def has(host: HostStatus) -> bool:
            try:
                response = await self.http.get(host.address + path, headers=headers)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        found = await asyncio.gather(*(has(h) for h in hosts))
        return next((h.name for h, ok in zip(hosts, found, strict=True) if ok), None)

    # ---- forwarding ----

    async def forward(
        self, request: Request, host: HostStatus, body: bytes | None = None
    ) -> Response:
        """`request` sent on to `host` as it is, its answer streamed back."""
        return _streamed(await self._send(request, host, body, stream=True), host)

    async def _send(
        self,
        request: Request,
        host: HostStatus,
        body: bytes | None,
        *,
        stream: bool = False,
        keep_host: bool = False,
    ) -> httpx.Response:
        """`keep_host`: the client's `Host` goes on (the registry names a pushed image by it)."""
        query = f"?{request.url.query}" if request.url.query else ""
        url = host.address + _raw_path(request) + query
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if keep_host:
            headers["host"] = request.headers.get("host", "")
        content: Any = body if body is not None else request.stream()
        outgoing = self.http.build_request(request.method, url, headers=headers, content=content)
        sent = asyncio.ensure_future(self.http.send(outgoing, stream=stream))
        try:
            # No read timeout (a restore or a create takes what it takes), but a host
            # whose lease lapses meanwhile is given up on: its answer may never come.
            while not (await asyncio.wait({sent}, timeout=HOSTS_FRESH_SECONDS))[0]:
                if not await self._still_live(host):
                    raise HostDown(f"host {host.name} went down during the request")
            return sent.result()
        except httpx.HTTPError as exc:
            raise HostDown(f"host {host.name} did not answer: {exc!r}") from exc
        finally:
            sent.cancel()

    async def _still_live(self, host: HostStatus) -> bool:
        try:
            return host.name in await self.live()
        except EtcdUnavailable:
            return True  # no news is not a lapse

    # ---- instances ----

    async def create(self, request: Request, path_host: HostStatus | None = None) -> Response:
        """Place, claim, forward; a refusal (429, 503, no answer) releases the claim and
        the next host is tried. A host that went silent mid-create may still make the
        instance: its member claims the name again when it is back (if still free)."""
        body = await request.body()
        spec = _json_object(body)
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument("name is required")
        want = _want(spec, request)
        if path_host is not None:  # a fork: it lands beside its saved VM
            order = [path_host]
        else:
            live = await self.live()
            if not live:
                raise HostDown("no live host in the cluster")
            order = rank(live.values(), want, self.recent)
            if not order:
                return _error(429, "insufficient_resources", "no live host fits this instance")
        refusal: Response = _error(503, "host_unavailable", "no host took the instance")
        for host in order:
            started = time.perf_counter()
            claim = await self.discovery.claim(name, host.name)
            if claim is None:
                return _error(409, "conflict", f"instance name {name!r} is in use in the cluster")
            claimed = time.perf_counter()
            try:
                answer = await self._send(request, host, body)
            except HostDown:
                await self.discovery.release(name, claim)
                continue
            timing = _server_timing(claim=claimed - started, host=time.perf_counter() - claimed)
            if answer.status_code >= 400:
                await self.discovery.release(name, claim)
                refusal = _copy(answer, host, timing)
                if answer.status_code in REFUSALS:
                    continue
                return refusal
            created = answer.json()
            if isinstance(created.get("id"), str):
                self.owners[created["id"]] = host.name
            self.recent.add(host.name, want)
            return _copy(answer, host, timing)
        return refusal

    async def instance(self, request: Request) -> Response:
        ref = request.path_params["ref"]
        rest = request.path_params.get("rest", "")
        host_name = await self.owner(ref, request.headers.get("authorization", ""))
        if host_name is None:
            return _error(404, "not_found", f"instance {ref!r} not found")
        host = (await self.live()).get(host_name)
        if host is None:
            return await self._down(request, ref, host_name)
        if request.method == "POST" and rest == "fork":
            return await self.create(request, path_host=host)
        if request.method == "DELETE" and not rest:
            return await self._delete(request, host, ref)
        return await self.forward(request, host)

    async def _delete(self, request: Request, host: HostStatus, ref: str) -> Response:
        found = await self.http.get(f"{host.address}/instances/{ref}", headers=_auth(request))
        answer = await self._send(request, host, b"")
        if answer.status_code < 300 and found.status_code == 200:
            name = found.json()["name"]
            claim = await self.discovery.claim_of(name)
            if claim is not None and claim.host == host.name:
                await self.discovery.release(name, claim)
            self.owners.pop(found.json()["id"], None)
        return _copy(answer, host)

    async def _down(self, request: Request, ref: str, host_name: str) -> Response:
        inventory = (await self.discovery.inventories()).get(host_name)
        summary = next(
            (i for i in (inventory.instances if inventory else []) if ref in (i.id, i.name)),
            None,
        )
        if request.method != "GET" or request.path_params.get("rest") or summary is None:
            raise HostDown(f"instance {ref!r} is on host {host_name}, which is down")
        return JSONResponse(
            {**summary.model_dump(), "state": "Unknown"}, headers={HOST_HEADER: host_name}
        )

    async def list_instances(self, request: Request) -> Response:
        live = await self.live()
        answers = await self._fan_out(request, list(live.values()))
        merged: list[Any] = []
        served: set[str] = set()
        for host, answer in answers:
            if answer is not None and answer.status_code == 200:
                merged.extend(answer.json())
                served.add(host.name)
        wanted = request.query_params.get("state")
        if wanted in (None, "Unknown"):
            for inventory in (await self.discovery.inventories()).values():
                if inventory.name not in served:
                    merged.extend(_unknown(inventory))
        return JSONResponse(merged)

    async def _fan_out(
        self, request: Request, hosts: list[HostStatus], body: bytes | None = b""
    ) -> list[tuple[HostStatus, httpx.Response | None]]:
        async def one(host: HostStatus) -> httpx.Response | None:
            try:
                return await self._send(request, host, body)
            except HostDown:
                return None

        answers = await asyncio.gather(*(one(h) for h in hosts))
        return list(zip(hosts, answers, strict=True))

    # ---- images: on every host ----

    async def images(self, request: Request) -> Response:
        hosts = sorted((await self.live()).values(), key=lambda h: h.name)
        if not hosts:
            raise HostDown("no live host")
        body = await request.body()
        if request.method == "POST":
            body = _with_cluster_credentials(body, hosts, request)
        answers = [(h, a) for h, a in await self._fan_out(request, hosts, body) if a is not None]
        if not answers:
            raise HostDown("no host answered")
        if request.method == "GET" and "name" not in request.path_params:
            return JSONResponse(_least_ready(answers))
        if request.method == "GET":
            host, answer = min(answers, key=lambda pair: _readiness(pair[1]))
            return _copy(answer, host)
        return _copy(answers[0][1], answers[0][0])

    # ---- the registry (`/v2/`): one per repository, pushed tags pulled by every host ----

    async def registry(self, request: Request) -> Response:
        """`/v2/` as one registry. A repository's pushes go to one host, the first of its
        rendezvous order over the live hosts (every gateway picks the same; an upload's
        requests meet on it); reads try the hosts in that order until one has it. A tag
        pushed through here is then pulled by every other live host, under the name the
        client pushed it as (`<gateway address>/<repo>:<tag>`), from this registry."""
        try:
            token = registry_token(request.headers.get("authorization"))
            verify_token(self.secret, token)
        except EmberError as exc:
            return oci_error(401, "UNAUTHORIZED", exc.message)
        path = request.url.path.removeprefix("/v2").lstrip("/")
        found = _REPOSITORY.match(path)
        try:
            hosts = _rendezvous(list((await self.live()).values()), found[1] if found else "")
        except EtcdUnavailable as exc:
            return oci_error(503, "UNAVAILABLE", f"etcd: {exc}")
        reads = request.method in ("GET", "HEAD")
        for host in hosts:
            try:
                upstream = await self._send(
                    request, host, b"" if reads else None, stream=True, keep_host=True
                )
            except HostDown as exc:
                if reads:
                    continue  # another host may have it
                return oci_error(503, "UNAVAILABLE", exc.message)
            if reads and upstream.status_code == 404 and host is not hosts[-1]:
                await upstream.aclose()
                continue
            tag = _pushed_tag(request, path, upstream.status_code)
            if tag is not None:
                name = f"{request.headers.get('host')}/{tag}"
                await self._pull_on(name, token, [h for h in hosts if h is not host])
            return _streamed(upstream, host, keep_length=True)
        return oci_error(503, "UNAVAILABLE", "no live host answered")

    async def _pull_on(self, name: str, token: str, hosts: list[HostStatus]) -> None:
        """Have `hosts` pull `name` (from this gateway's `/v2/`, with the pusher's token)."""
        body = {"name": name, "credentials": {"username": "ember", "password": token}}
        auth = {"Authorization": f"Bearer {token}"}

        async def pull(host: HostStatus) -> None:
            try:
                answer = await self.http.post(
                    f"{host.address}/images", json=body, headers=auth, timeout=PULL_TIMEOUT
                )
            except httpx.HTTPError as exc:
                log.warning("gateway: %s did not take the pull of %s: %r", host.name, name, exc)
                return
            if answer.status_code >= 400:
                log.warning("gateway: %s refused the pull of %s: %s", host.name, name, answer.text)

        await asyncio.gather(*(pull(h) for h in hosts))

    # ---- resources: the cluster's sum, each host's figures beside it ----

    async def resources(self, request: Request) -> Response:
        """`GET /resources` for the cluster: every figure summed over the live hosts and
        allocations listed together (Hypeman's shape), each host's own answer under the
        Ember extension `hosts`."""
        live = sorted((await self.live()).values(), key=lambda h: h.name)
        answers = {
            host.name: answer.json()
            for host, answer in await self._fan_out(request, live)
            if answer is not None and answer.status_code == 200
        }
        if not answers:
            raise HostDown("no live host answered")
        return JSONResponse({**_summed(list(answers.values())), "hosts": answers})

    # ---- everything else: proxied to the host that has it ----

    async def other(self, request: Request) -> Response:
        """Volumes, snapshots, ingresses, host routes: an item goes to the host that has
        it, a list merges all hosts, a create goes to `X-Ember-Host` or the first host."""
        live = await self.live()
        parts = request.url.path.strip("/").split("/")
        chosen = request.headers.get(HOST_HEADER)
        if chosen is not None:
            if chosen not in live:
                raise HostDown(f"host {chosen!r} is not live")
            return await self.forward(request, live[chosen])
        holder = None
        if len(parts) >= 2:
            holder = await self._holder("/" + "/".join(parts[:2]), _auth(request))
        if holder is not None:
            if request.method == "POST" and parts[-1] == "fork":  # a snapshot's fork
                return await self.create(request, path_host=live[holder])
            return await self.forward(request, live[holder])
        if request.method == "GET" and len(parts) == 1:
            return await self._merged(request, list(live.values()))
        if request.method != "POST":
            return _error(404, "not_found", f"{request.url.path} not found on any host")
        if not live:
            raise HostDown("no live host")
        return await self.forward(request, live[min(live)])

    async def _merged(self, request: Request, hosts: list[HostStatus]) -> Response:
        merged: list[Any] = []
        for _, answer in await self._fan_out(request, hosts):
            if answer is not None and answer.status_code == 200:
                body = answer.json()
                if not isinstance(body, list):
                    return JSONResponse(body)  # not a list (e.g. /resources): one host's
                merged.extend(body)
        return JSONResponse(merged)

    # ---- the cluster's own view ----

    async def cluster_hosts(self, _: Request) -> Response:
        live = await self.live(reread=True)
        inventories = await self.discovery.inventories()
        hosts = []
        for name in sorted(live.keys() | inventories.keys()):
            status, inventory = live.get(name), inventories.get(name)
            hosts.append({
                "name": name,
                "live": status is not None,
                "address": status.address if status else inventory.address if inventory else None,
                "labels": status.labels if status else {},
                "images": status.images if status else [],
                "cpu": status.cpu.model_dump() if status else None,
                "memory": status.memory.model_dump() if status else None,
                "instances": [
                    {**i.model_dump(), "state": i.state if status else "Unknown"}
                    for i in (inventory.instances if inventory else [])
                ],
            })  # fmt: skip
        return JSONResponse({"hosts": hosts})

    # ---- WebSockets (exec, cp) ----

    async def websocket(self, ws: WebSocket) -> None:
        """Exec and cp: the upgrade is refused the way the host refuses it (an HTTP error
        with `{"code", "message"}`), then frames are relayed both ways."""
        ref, authorization = ws.path_params["ref"], ws.headers.get("authorization", "")
        try:
            self.check(authorization)
            host_name = await self.owner(ref, authorization)
            host = (await self.live()).get(host_name or "")
            if host is None:
                raise HostDown(f"instance {ref!r}: no live host holds it")
        except EmberError as exc:
            await ws.send_denial_response(_error(exc.status, exc.code, exc.message))
            return
        except EtcdUnavailable as exc:
            await ws.send_denial_response(_error(503, "cluster_unavailable", f"etcd: {exc}"))
            return
        url = "ws" + host.address.removeprefix("http") + _raw_path(ws)
        url += f"?{ws.url.query}" if ws.url.query else ""
        try:
            # No pings on this hop: a host busy booting must not look dead to the relay.
            upstream = await websockets.connect(
                url, additional_headers={"Authorization": authorization}, max_size=None,
                compression=None, ping_interval=None, open_timeout=60,
            )  # fmt: skip
        except websockets.InvalidStatus as exc:
            denial = exc.response
            await ws.send_denial_response(
                Response(denial.body, denial.status_code, media_type="application/json")
            )
            return
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            await ws.send_denial_response(
                _error(503, "host_unavailable", f"host {host.name}: {exc!r}")
            )
            return
        async with upstream:
            await ws.accept()
            await _pump(ws, upstream)

    # ---- auth ----

    def check(self, authorization: str | None) -> None:
        verify_token(self.secret, bearer_token(authorization))

    def start(self) -> None:
        """Start the background refresh of the live hosts (in the running event loop)."""
        self._refresher.start()

    async def close(self) -> None:
        await self._refresher.close()
        await self.http.aclose()
        await self.discovery.close()


async def _pump(ws: WebSocket, upstream: websockets.ClientConnection) -> None:
    """Frames both ways until either side closes; the host's close code goes back."""

    async def client_to_host() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                await upstream.send(data if data is not None else message.get("text", ""))
        await upstream.close()

    async def host_to_client() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in upstream:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_text(frame)
        code = upstream.close_code or 1000
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # the client went first
            await ws.close(code=code, reason=upstream.close_reason or "")

    tasks = [asyncio.ensure_future(client_to_host()), asyncio.ensure_future(host_to_client())]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    # Either side may have gone mid-frame: that ends the relay, it is not a failure.
    await asyncio.gather(*tasks, return_exceptions=True)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        spec = json.loads(body or b"{}")
    except ValueError as exc:
        raise InvalidArgument(f"request body is not JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise InvalidArgument("request body must be a JSON object")
    return spec


def _want(spec: dict[str, Any], request: Request) -> Want:
    labels = dict(
        label.split("=", 1) for label in request.query_params.getlist("label") if "=" in label
    )
    vcpus = spec.get("vcpus", 1)
    try:
        memory = parse_size(spec.get("size", "1GB"))
    except (EmberError, ValueError, TypeError):
        memory = 0  # the host answers the bad size with its own 400
    image = None
    with contextlib.suppress(EmberError, TypeError, AttributeError):
        image = parse_reference(spec.get("image", "")).name  # as hosts publish it
    return Want(vcpus if isinstance(vcpus, int) else 1, memory, labels, image)


def _with_cluster_credentials(body: bytes, hosts: list[HostStatus], request: Request) -> bytes:
    """A pull from a cluster host's own registry (`<host address>/<repo>:<tag>`, where an
    image pushed to that host lives) or from this gateway's carries the caller's token to
    it, so every host can pull what was pushed to one."""
    spec = _json_object(body)
    registry = str(spec.get("name", "")).partition("/")[0]
    ours = {urlsplit(h.address).netloc for h in hosts} | {request.headers.get("host")}
    if spec.get("credentials") or registry not in ours:
        return body
    token = bearer_token(request.headers.get("authorization"))
    return json.dumps({**spec, "credentials": {"username": "ember", "password": token}}).encode()


def _raw_path(connection: Request | WebSocket) -> str:
    """The path as the client sent it (an image name's `%2F` stays encoded)."""
    raw: bytes = connection.scope.get("raw_path") or connection.url.path.encode()
    return raw.decode()


def _auth(request: Request) -> dict[str, str]:
    return {"Authorization": request.headers.get("authorization", "")}


def _answer_headers(
    answer: httpx.Response, host: HostStatus, *, keep_length: bool = False
) -> dict[str, str]:
    """`keep_length`: the host's `Content-Length` goes on (a registry's `HEAD` of a blob
    says its size with it)."""
    dropped = _HOP - {"content-length"} if keep_length else _HOP
    kept = {k: v for k, v in answer.headers.items() if k.lower() not in dropped}
    return {**kept, HOST_HEADER: host.name}


def _streamed(upstream: httpx.Response, host: HostStatus, *, keep_length: bool = False) -> Response:
    """An answer of `host` passed on as it arrives."""
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers=_answer_headers(upstream, host, keep_length=keep_length),
        background=BackgroundTask(upstream.aclose),
    )


def _rendezvous(hosts: list[HostStatus], key: str) -> list[HostStatus]:
    """`hosts` in `key`'s rendezvous order: the same on every gateway, and a host joining
    or leaving moves only the keys it comes first for."""
    return sorted(hosts, key=lambda h: hashlib.sha256(f"{key}\0{h.name}".encode()).digest())


def _pushed_tag(request: Request, path: str, status: int) -> str | None:
    """`<repo>:<tag>` when this was a tag's manifest pushed (not a digest's)."""
    found = _MANIFEST.match(path)
    if request.method != "PUT" or status != 201 or found is None or ":" in found[2]:
        return None
    return f"{found[1]}:{found[2]}"


def _summed(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Hosts' `/resources` answers as one: capacities and allocations add up; a ratio is the
    sum's (effective limit over capacity); a `source` stays if every host says the same."""
    summed: dict[str, Any] = {"allocations": [a for r in answers for a in r["allocations"]]}
    for kind in ("cpu", "memory", "disk", "disk_io", "network"):
        parts = [r[kind] for r in answers if kind in r]
        if not parts:
            continue
        total = {f: sum(p[f] for p in parts) for f in _SUMMED_FIELDS}
        ratio = total["effective_limit"] / total["capacity"] if total["capacity"] else 1.0
        status = {"type": parts[0]["type"], **total, "oversub_ratio": ratio}
        sources = {p.get("source") for p in parts}
        if len(sources) == 1 and None not in sources:
            status["source"] = sources.pop()
        summed[kind] = status
    breakdowns = [r["disk_breakdown"] for r in answers if "disk_breakdown" in r]
    if breakdowns:
        keys = {k for b in breakdowns for k in b}
        summed["disk_breakdown"] = {k: sum(b.get(k, 0) for b in breakdowns) for k in keys}
    return summed


def _server_timing(**seconds: float) -> str:
    """A `Server-Timing` value (W3C): where a create's time went, the claim and the host's
    round trip apart from the gateway's own work."""
    return ", ".join(f"{phase};dur={s * 1000:.2f}" for phase, s in seconds.items())


def _copy(answer: httpx.Response, host: HostStatus, timing: str | None = None) -> Response:
    """A fully read answer of `host`, passed on (with a `Server-Timing` when given)."""
    headers = _answer_headers(answer, host)
    headers.pop("content-encoding", None)  # httpx decoded it
    if timing is not None:  # before the host's own entries (its `app`), if any
        headers["server-timing"] = ", ".join(
            t for t in (timing, answer.headers.get("server-timing")) if t
        )
    return Response(answer.content, status_code=answer.status_code, headers=headers)


def _unknown(inventory: Inventory) -> list[dict[str, Any]]:
    return [{**i.model_dump(), "state": "Unknown"} for i in inventory.instances]


def _rank(image: dict[str, Any]) -> int:
    return _IMAGE_READINESS.get(str(image.get("status")), 0)


def _readiness(answer: httpx.Response) -> int:
    return _rank(answer.json()) if answer.status_code == 200 else -1


def _least_ready(answers: list[tuple[HostStatus, httpx.Response]]) -> list[Any]:
    """Each image once, as its least-ready copy; missing on a host: that host's absence
    shows as `pending` (the image is not usable everywhere yet)."""
    lists: list[list[dict[str, Any]]] = [a.json() for _, a in answers if a.status_code == 200]
    by_name: dict[str, dict[str, Any]] = {}
    for image in (i for listing in lists for i in listing):
        seen = by_name.get(image["name"])
        if seen is None or _rank(image) < _rank(seen):
            by_name[image["name"]] = image
    for name, image in by_name.items():
        if sum(any(i["name"] == name for i in listing) for listing in lists) < len(lists):
            by_name[name] = {**image, "status": "pending"}
    return list(by_name.values())


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(gateway: Gateway, handler: Handler) -> Handler:
    """Auth first; domain and store failures as `{"code", "message"}`."""

    async def run(request: Request) -> Response:
        try:
            gateway.check(request.headers.get("authorization"))
            return await handler(request)
        except EmberError as exc:
            return _error(exc.status, exc.code, exc.message)
        except EtcdUnavailable as exc:
            return _error(503, "cluster_unavailable", f"etcd: {exc}")

    return run


def create_gateway_app(gateway: Gateway) -> Starlette:
    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        gateway.start()
        yield
        await gateway.close()

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        return Route(path, _guarded(gateway, handler), methods=methods)

    every = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    routes = [
        Route("/health", health, methods=["GET"]),
        route("/cluster/hosts", gateway.cluster_hosts, ["GET"]),
        route("/instances", gateway.create, ["POST"]),
        route("/instances", gateway.list_instances, ["GET"]),
        WebSocketRoute("/instances/{ref}/exec", gateway.websocket),
        WebSocketRoute("/instances/{ref}/cp", gateway.websocket),
        route("/instances/{ref}", gateway.instance, every),
        route("/instances/{ref}/{rest:path}", gateway.instance, every),
        route("/resources", gateway.resources, ["GET"]),
        Route("/v2", gateway.registry, methods=["GET", "HEAD"]),
        Route("/v2/{path:path}", gateway.registry, methods=[*every, "HEAD"]),
        route("/images", gateway.images, ["GET", "POST"]),
        route("/images/{name:path}", gateway.images, ["GET", "DELETE"]),
        route("/{path:path}", gateway.other, every),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
