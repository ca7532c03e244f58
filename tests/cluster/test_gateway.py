"""The gateway's create and failure paths against a real etcd, with hosts played by an
httpx mock transport (their refusals are what is under test)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from ember.api.auth import mint_token
from ember.cluster import gateway as gateway_module
from ember.cluster.discovery import Capacity, HostStatus, InstanceSummary, Inventory, heard_from
from ember.cluster.etcd import Etcd
from ember.cluster.gateway import Gateway, create_gateway_app

SECRET = b"a-cluster-secret-of-32-bytes-or-more"
GIB = 2**30
Answer = Callable[[httpx.Request], httpx.Response]


@dataclass
class Hosts:
    """Each host's answer to a create, and what each host was sent."""

    answers: dict[str, Answer]
    seen: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.seen.append((host, f"{request.method} {request.url.path}"))
        return self.answers[host](request)


def created(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    return httpx.Response(201, json={"id": f"id-{body['name']}", "name": body["name"]})


def refused(status: int) -> Answer:
    return lambda _: httpx.Response(status, json={"code": "x", "message": "no"})


def status(name: str, free_gib: int, *, beat: float | None = None) -> HostStatus:
    return HostStatus(
        name=name, address=f"http://{name}", ttl=30, beat=beat or time.time(),
        cpu=Capacity(effective_limit=8, allocated=0, available=8),
        memory=Capacity(effective_limit=16 * GIB, allocated=0, available=free_gib * GIB),
    )  # fmt: skip


@pytest.fixture
async def etcd(etcd_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Etcd]:
    client = Etcd([etcd_url], prefix=f"/gw-{request.node.name}/")
    yield client
    await client.close()


async def join(etcd: Etcd, host: HostStatus) -> Etcd:
    """A host registered under its own lease (one Etcd client per host, as in a member)."""
    member = Etcd(etcd.endpoints, prefix=etcd.prefix)
    await member.register(host, ttl=30)
    await member.publish(host, Inventory(name=host.name, address=host.address))
    return member


@pytest.fixture
def gateway_for(
    etcd: Etcd,
) -> Callable[[Hosts], httpx.AsyncClient]:
    def make(hosts: Hosts) -> httpx.AsyncClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(hosts))
        gateway = Gateway(Etcd(etcd.endpoints, prefix=etcd.prefix), SECRET, http=http)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_gateway_app(gateway)),
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {mint_token(SECRET, 'test')}"},
        )

    return make


BODY = {"name": "web", "image": "img", "vcpus": 1, "size": "1GB"}


async def test_a_refusal_moves_the_create_and_its_claim_to_the_next_host(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    await join(etcd, status("emptier", 16))  # scored first
    await join(etcd, status("fuller", 4))
    hosts = Hosts({"emptier": refused(429), "fuller": created})
    async with gateway_for(hosts) as api:
        answer = await api.post("/instances", json=BODY)
    assert answer.status_code == 201
    assert answer.headers["X-Ember-Host"] == "fuller"
    # Where the time went: the claim, and the host's round trip as the gateway saw it.
    assert [t.split(";")[0] for t in answer.headers["server-timing"].split(", ")] == [
        "claim",
        "host",
    ]
    assert [host for host, _ in hosts.seen] == ["emptier", "fuller"]
    claim = await etcd.claim_of("web")
    assert claim is not None and claim.host == "fuller"


async def test_when_every_host_refuses_the_name_is_free_again(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    await join(etcd, status("a", 8))
    await join(etcd, status("b", 8))
    async with gateway_for(Hosts({"a": refused(503), "b": refused(429)})) as api:
        answer = await api.post("/instances", json=BODY)
    assert answer.status_code in (429, 503)
    assert set(answer.json()) == {"code", "message"}
    assert await etcd.claim_of("web") is None


async def test_a_bad_request_is_passed_on_and_releases_the_claim(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    await join(etcd, status("a", 8))
    hosts = Hosts({"a": refused(400)})
    async with gateway_for(hosts) as api:
        answer = await api.post("/instances", json=BODY)
    assert answer.status_code == 400
    assert len(hosts.seen) == 1  # not tried elsewhere
    assert await etcd.claim_of("web") is None


async def test_a_held_name_is_409_without_asking_a_host(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    await join(etcd, status("a", 8))
    assert await etcd.claim("web", "elsewhere") is not None
    hosts = Hosts({"a": created})
    async with gateway_for(hosts) as api:
        answer = await api.post("/instances", json=BODY)
    assert (answer.status_code, answer.json()["code"]) == (409, "conflict")
    assert hosts.seen == []


async def test_no_live_host_fits(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    await join(etcd, status("small", 0))
    async with gateway_for(Hosts({})) as api:
        answer = await api.post("/instances", json=BODY)
    assert (answer.status_code, answer.json()["code"]) == (429, "insufficient_resources")
    assert await etcd.claim_of("web") is None


async def test_bad_bodies_and_missing_tokens(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    async with gateway_for(Hosts({})) as api:
        no_name = await api.post("/instances", json={"image": "img"})
        not_json = await api.post("/instances", content=b"{")
        anonymous = await api.get("/instances", headers={"Authorization": ""})
    assert (no_name.status_code, no_name.json()["code"]) == (400, "bad_request")
    assert not_json.status_code == 400
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthorized")


async def test_a_down_hosts_instances_read_unknown(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    vm = InstanceSummary(id="i1", name="web", image="img", state="Running", vcpus=1,
                         created_at="2026-01-01T00:00:00")  # fmt: skip
    member = await join(etcd, status("gone", 8))
    await member.publish(status("gone", 8), Inventory(name="gone", address="http://gone",
                                                      instances=[vm]))  # fmt: skip
    await member.withdraw()  # as a lapse would
    async with gateway_for(Hosts({})) as api:
        one = await api.get("/instances/web")
        listed = await api.get("/instances")
        stop = await api.post("/instances/i1/stop")
    assert (one.status_code, one.json()["state"], one.json()["id"]) == (200, "Unknown", "i1")
    assert [(i["name"], i["state"]) for i in listed.json()] == [("web", "Unknown")]
    assert (stop.status_code, stop.json()["code"]) == (503, "host_unavailable")


def by_path(routes: dict[str, tuple[int, object]]) -> Answer:
    """A host answering `METHOD /path` with `routes`' (status, JSON), 404 otherwise."""

    def answer(request: httpx.Request) -> httpx.Response:
        code, body = routes.get(f"{request.method} {request.url.path}", (404, {"code": "x"}))
        return httpx.Response(code, headers={"content-type": "application/json"},
                              content=streamed(json.dumps(body).encode()))  # fmt: skip

    return answer


async def streamed(data: bytes) -> AsyncIterator[bytes]:
    """A body a real host would stream (a ready-made one cannot be proxied as raw bytes)."""
    yield data


async def test_other_resources_go_where_they_live(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    await join(etcd, status("a", 8))
    await join(etcd, status("b", 8))
    volume = {"id": "v1", "name": "data"}
    hosts = Hosts({
        "a": by_path({"GET /volumes": (200, []),
                      "POST /volumes": (201, {"id": "v2"})}),
        "b": by_path({"GET /volumes": (200, [volume]),
                      "GET /volumes/v1": (200, volume),
                      "POST /volumes": (201, {"id": "v3"}),
                      "GET /snapshots/s1": (200, {"id": "s1"}),
                      "POST /snapshots/s1/fork": (201, {"id": "i9"})}),
    })  # fmt: skip
    async with gateway_for(hosts) as api:
        listed = await api.get("/volumes")
        one = await api.get("/volumes/v1")
        default = await api.post("/volumes", json={"name": "x", "size_gb": 1})
        chosen = await api.post("/volumes", json={"name": "y", "size_gb": 1},
                                headers={"X-Ember-Host": "b"})  # fmt: skip
        fork = await api.post("/snapshots/s1/fork", json={"name": "copy"})
        nowhere = await api.delete("/volumes/v404")
    assert listed.json() == [volume]
    assert (one.json(), one.headers["X-Ember-Host"]) == (volume, "b")
    assert (default.headers["X-Ember-Host"], chosen.headers["X-Ember-Host"]) == ("a", "b")
    assert (fork.status_code, fork.headers["X-Ember-Host"]) == (201, "b")
    claim = await etcd.claim_of("copy")  # a fork's name is claimed like a create's
    assert claim is not None and claim.host == "b"
    assert (nowhere.status_code, nowhere.json()["code"]) == (404, "not_found")


async def test_a_name_follows_its_claim_not_a_cache(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    await join(etcd, status("a", 16))
    await join(etcd, status("b", 4))
    web = {"id": "id-web", "name": "web"}
    hosts = Hosts({
        "a": by_path({"POST /instances": (201, web),
                      "GET /instances/web": (200, web),
                      "DELETE /instances/web": (204, None)}),
        "b": by_path({"GET /instances/web": (200, {**web, "id": "id-2"})}),
    })  # fmt: skip
    async with gateway_for(hosts) as api:
        assert (await api.post("/instances", json=BODY)).headers["X-Ember-Host"] == "a"
        assert (await api.delete("/instances/web")).status_code == 204
        assert await etcd.claim_of("web") is None  # the delete released it
        assert await etcd.claim("web", "b") is not None  # made again on b, elsewhere
        again = await api.get("/instances/web")
    assert (again.json()["id"], again.headers["X-Ember-Host"]) == ("id-2", "b")


async def test_a_silent_host_reads_down_before_its_lease_lapses(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    """Its lease is still there (30 s), but it has not beaten for more than 3/4 of it."""
    vm = InstanceSummary(id="i1", name="web", image="img", state="Running", vcpus=1,
                         created_at="2026-01-01T00:00:00")  # fmt: skip
    silent = status("silent", 8, beat=time.time() - 23)
    member = await join(etcd, silent)
    await member.publish(silent, Inventory(name="silent", address="http://silent",
                                           instances=[vm]))  # fmt: skip
    await join(etcd, status("beating", 8))
    async with gateway_for(Hosts({"beating": created})) as api:
        hosts = (await api.get("/cluster/hosts")).json()["hosts"]
        one = await api.get("/instances/web")
        placed = await api.post("/instances", json=BODY)
    assert {h["name"]: h["live"] for h in hosts} == {"beating": True, "silent": False}
    assert (one.status_code, one.json()["state"]) == (200, "Unknown")
    assert placed.headers["X-Ember-Host"] == "beating"


def figures(cpu: int, memory: int, allocations: list[str]) -> dict[str, object]:
    def one(kind: str, capacity: int, allocated: int) -> dict[str, object]:
        return {"type": kind, "capacity": capacity, "effective_limit": 2 * capacity,
                "allocated": allocated, "available": 2 * capacity - allocated,
                "oversub_ratio": 2.0, "source": "detected"}  # fmt: skip

    return {
        "cpu": one("cpu", cpu, len(allocations)), "memory": one("memory", memory, 0),
        "disk": one("disk", 100, 10), "network": one("network", 1000, 0),
        "allocations": [{"instance_id": i, "instance_name": i} for i in allocations],
    }  # fmt: skip


async def test_resources_are_the_clusters_sum_with_each_host_beside_it(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    await join(etcd, status("a", 8))
    await join(etcd, status("b", 8))
    a, b = figures(2, 4 * GIB, ["x"]), figures(4, 8 * GIB, ["y", "z"])
    hosts = Hosts({"a": by_path({"GET /resources": (200, a)}),
                   "b": by_path({"GET /resources": (200, b)})})  # fmt: skip
    async with gateway_for(hosts) as api:
        answer = (await api.get("/resources")).json()
    assert answer["cpu"] == {"type": "cpu", "capacity": 6, "effective_limit": 12,
                             "allocated": 3, "available": 9, "oversub_ratio": 2.0,
                             "source": "detected"}  # fmt: skip
    assert answer["memory"]["capacity"] == 12 * GIB
    assert [x["instance_id"] for x in answer["allocations"]] == ["x", "y", "z"]
    assert answer["hosts"] == {"a": a, "b": b}


async def test_a_push_lands_on_one_host_and_every_other_host_pulls_the_tag(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    for name in ("a", "b", "c"):
        await join(etcd, status(name, 8))
    order = gateway_module._rendezvous(
        [status(n, 8) for n in ("a", "b", "c")], "team/app"
    )  # fmt: skip
    holder = order[0].name
    digest = "sha256:" + "0" * 64
    pulls: list[dict[str, object]] = []

    def host(name: str) -> Answer:
        def answer(request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and request.url.path == "/images":
                pulls.append({"host": name, **json.loads(request.content)})
                return httpx.Response(202, json={})
            if request.url.path.startswith("/v2/") and name == holder:
                # The registry names the image by the Host the client used.
                assert request.headers["host"] == "gateway"
                return httpx.Response(201, content=streamed(b""))
            return httpx.Response(404, content=streamed(b'{"errors": []}'))

        return answer

    hosts = Hosts({n: host(n) for n in ("a", "b", "c")})
    token = mint_token(SECRET, "test")
    async with gateway_for(hosts) as api:
        bearer = {"Authorization": f"Bearer {token}"}
        pushed = await api.put("/v2/team/app/manifests/v1", content=b"{}", headers=bearer)
        by_digest = await api.put(f"/v2/team/app/manifests/{digest}", content=b"{}")
        blob = await api.get(f"/v2/team/app/blobs/{digest}")
        basic = await api.get(f"/v2/team/app/blobs/{digest}", auth=("me", token))
        anonymous = await api.get("/v2/", headers={"Authorization": ""})
    assert (pushed.status_code, pushed.headers["X-Ember-Host"]) == (201, holder)
    assert by_digest.status_code == 201  # a digest is not a tag: nothing to pull
    assert sorted(str(p["host"]) for p in pulls) == sorted(h.name for h in order[1:])
    credentials = {"username": "ember", "password": token}
    assert all(p["name"] == "gateway/team/app:v1" for p in pulls)
    assert all(p["credentials"] == credentials for p in pulls)
    # Reads go down the same order until a host has it.
    assert (blob.headers["X-Ember-Host"], basic.status_code) == (holder, 201)
    assert anonymous.status_code == 401 and "Basic" in anonymous.headers["WWW-Authenticate"]


async def test_a_pull_from_a_cluster_registry_carries_the_callers_token(
    etcd: Etcd, gateway_for: Callable[[Hosts], httpx.AsyncClient]
) -> None:
    await join(etcd, status("a", 8))
    await join(etcd, status("b", 8))
    sent: list[dict[str, object]] = []

    def pull(request: httpx.Request) -> httpx.Response:
        sent.append({"host": request.url.host, **json.loads(request.content)})
        return httpx.Response(202, json={"name": "x", "status": "pending"})

    token = mint_token(SECRET, "test")
    async with gateway_for(Hosts({"a": pull, "b": pull})) as api:
        bearer = {"Authorization": f"Bearer {token}"}
        for name in ("gateway/app:v1", "a/app:v1", "docker.io/library/alpine:3"):
            assert (await api.post("/images", json={"name": name}, headers=bearer)).is_success
    carried = {"username": "ember", "password": token}
    by_name = {(p["name"], p["host"]): p.get("credentials") for p in sent}
    assert by_name == {
        ("gateway/app:v1", "a"): carried, ("gateway/app:v1", "b"): carried,
        ("a/app:v1", "a"): carried, ("a/app:v1", "b"): carried,
        ("docker.io/library/alpine:3", "a"): None, ("docker.io/library/alpine:3", "b"): None,
    }  # fmt: skip


def test_a_host_reads_down_early_only_while_others_beat_after_it() -> None:
    now = time.time()
    hosts = {"quiet": status("quiet", 8, beat=now - 23), "other": status("other", 8, beat=now)}
    assert list(heard_from(hosts, now)) == ["other"]
    # Nobody beat lately (an etcd election: no write lands): the leases alone decide.
    hosts["other"] = status("other", 8, beat=now - 22)
    assert sorted(heard_from(hosts, now)) == ["other", "quiet"]
    # Silent, but not for most of its TTL yet: still up.
    hosts = {"late": status("late", 8, beat=now - 20), "other": status("other", 8, beat=now)}
    assert sorted(heard_from(hosts, now)) == ["late", "other"]
