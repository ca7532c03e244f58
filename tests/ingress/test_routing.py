"""Ingress through a real Caddy, in a network namespace, to stand-in instances."""

from __future__ import annotations

import time

import pytest

from ember.errors import Conflict, InvalidArgument
from ember.ingress import IngressManager, IngressRule
from tests.ingress.conftest import World, caddy_pids, ingress_settings, make_manager

SECRET = "s3cret-0123456789abcdef0123456789abcdef"


def rule(hostname: str, instance: str, port: int | None = None, **extra: object) -> IngressRule:
    return IngressRule.model_validate(
        {"match": {"hostname": hostname, "port": port},
         "target": {"instance": instance, "port": 8080}, **extra}
    )  # fmt: skip


async def test_literal_route(manager: IngressManager, world: World) -> None:
    created = await manager.create("site", [rule("web.example.com", "web")], {"team": "a"})
    assert created.rules[0].match.port == 80  # the port served, stated explicitly

    status, body, _ = world.netns.curl("http://127.0.0.1/hello", "-H", "Host: web.example.com")
    assert (status, body) == (200, "web /hello X-Ember-Test=-")
    status, body, _ = world.netns.curl("http://127.0.0.1/", "-H", "Host: other.example.com")
    assert status == 404 and "no rule for other.example.com" in body


async def test_pattern_route(manager: IngressManager, world: World) -> None:
    await manager.create("apps", [rule("{instance}.apps.test", "{instance}", 8081)])

    for name in ("web", "api"):
        status, body, _ = world.netns.curl(
            "http://127.0.0.1:8081/p", "-H", f"Host: {name}.apps.test"
        )
        assert (status, body) == (200, f"{name} /p X-Ember-Test=-")
    # A capture naming no instance: DNS has no answer, the request ends at once.
    status, body, _ = world.netns.curl("http://127.0.0.1:8081/", "-H", "Host: nope.apps.test")
    assert status in (502, 503) and "instance unavailable for nope.apps.test" in body


async def test_literal_beats_pattern(manager: IngressManager, world: World) -> None:
    await manager.create("apps", [rule("{instance}.example.com", "{instance}")])
    await manager.create("pinned", [rule("api.example.com", "web")])
    _, body, _ = world.netns.curl("http://127.0.0.1/", "-H", "Host: api.example.com")
    assert body.startswith("web ")
    _, body, _ = world.netns.curl("http://127.0.0.1/", "-H", "Host: web.example.com")
    assert body.startswith("web ")


async def test_any_host_answers_every_name_after_the_named_routes(
    manager: IngressManager, world: World
) -> None:
    """`*` (what `ember run -p 8082:8080` publishes) matches whatever Host a client sent:
    `localhost`, an address, a name of the machine; named routes on the port go first."""
    await manager.create("anyhost", [rule("*", "web", 8082)])
    await manager.create("named", [rule("api.example.com", "api", 8082)])
    for host in ("localhost", "127.0.0.1:8082", "10.0.0.7", "box.example.org"):
        status, body, _ = world.netns.curl("http://127.0.0.1:8082/a", "-H", f"Host: {host}")
        assert (status, body) == (200, "web /a X-Ember-Test=-"), host
    _, body, _ = world.netns.curl("http://127.0.0.1:8082/", "-H", "Host: api.example.com")
    assert body.startswith("api ")
    with pytest.raises(Conflict, match="hostname '\\*' on port 8082 is already routed"):
        await manager.create("again", [rule("*", "api", 8082)])


async def test_tls_with_internal_ca_and_redirect(manager: IngressManager, world: World) -> None:
    await manager.create(
        "secure", [rule("secure.example.com", "web", tls=True, redirect_http=True)]
    )
    ca = world.netns.work / "ca.pem"
    ca.write_bytes(manager.ca_certificate())
    resolve = "secure.example.com:443:127.0.0.1"
    status, body, _ = world.netns.curl(
        "https://secure.example.com/s", "--resolve", resolve, "--cacert", str(ca)
    )
    assert (status, body) == (200, "web /s X-Ember-Test=-")

    status, _, headers = world.netns.curl(
        "http://127.0.0.1/a?b=c", "-H", "Host: secure.example.com"
    )
    assert status == 308
    assert headers["location"] == "https://secure.example.com/a?b=c"


async def test_tls_pattern_gets_a_wildcard_certificate(
    manager: IngressManager, world: World
) -> None:
    await manager.create("tls-apps", [rule("{instance}.tls.test", "{instance}", 8443, tls=True)])
    ca = world.netns.work / "ca.pem"
    ca.write_bytes(manager.ca_certificate())
    status, body, _ = world.netns.curl(
        "https://api.tls.test:8443/",
        "--resolve",
        "api.tls.test:8443:127.0.0.1",
        "--cacert",
        str(ca),
    )
    assert (status, body) == (200, "api / X-Ember-Test=-")


async def test_request_header_auth(manager: IngressManager, world: World) -> None:
    auth = {"header": "X-Ember-Test", "value": SECRET}
    await manager.create("guarded", [rule("guarded.test", "web", request_header_auth=auth)])
    host = "Host: guarded.test"

    status, body, _ = world.netns.curl("http://127.0.0.1/", "-H", host)
    assert status == 403 and "forbidden" in body
    status, _, _ = world.netns.curl("http://127.0.0.1/", "-H", host, "-H", "X-Ember-Test: wrong")
    assert status == 403
    status, body, _ = world.netns.curl(
        "http://127.0.0.1/", "-H", host, "-H", f"X-Ember-Test: {SECRET}"
    )
    # Let through, and the secret header stripped on the way: the instance never sees it.
    assert (status, body) == (200, "web / X-Ember-Test=-")


async def test_conflicts_and_bad_rules(manager: IngressManager) -> None:
    await manager.create("first", [rule("a.example.com", "web")])

    with pytest.raises(Conflict, match="already routed by ingress 'first'"):
        await manager.create("second", [rule("A.example.com", "api")])
    with pytest.raises(Conflict, match="already exists"):
        await manager.create("first", [rule("b.example.com", "api")])
    with pytest.raises(Conflict, match="port 80 already serves plain HTTP"):
        await manager.create("mixed", [rule("c.example.com", "web", 80, tls=True)])
    with pytest.raises(InvalidArgument, match=r"rules\[0\].target.instance: instance 'nobody'"):
        await manager.create("ghost", [rule("d.example.com", "nobody")])
    with pytest.raises(InvalidArgument, match="redirect_http: requires tls"):
        await manager.create("redir", [rule("e.example.com", "web", redirect_http=True)])
    with pytest.raises(InvalidArgument, match=r"capture \{app\}"):
        await manager.create("capture", [rule("{instance}.example.org", "{app}")])
    # A different port is a different listener: the same hostname is free there.
    await manager.create("other-port", [rule("a.example.com", "api", 8082)])
    assert [r.name for r in manager.find()] == ["first", "other-port"]


async def test_dead_upstreams_fail_fast_with_a_clear_body(
    manager: IngressManager, world: World
) -> None:
    await manager.create("dead", [rule("stopped.test", "stopped"), rule("gone.test", "gone")])
    for host in ("stopped.test", "gone.test"):
        status, body, _ = world.netns.curl("http://127.0.0.1/", "-H", f"Host: {host}")
        assert status == 502, (host, body)
        assert f"instance unavailable for {host}" in body


async def test_route_follows_an_address_change(manager: IngressManager, world: World) -> None:
    await manager.create("moving", [rule("moving.test", "web")])
    _, body, _ = world.netns.curl("http://127.0.0.1/", "-H", "Host: moving.test")
    assert body.startswith("web ")
    # The instance comes back elsewhere (a stop/start, a restore): same name, new address.
    world.upstream("web-moved", "127.0.0.5")
    world.set_record("web", "127.0.0.5")
    deadline = time.monotonic() + 30
    while not body.startswith("web-moved ") and time.monotonic() < deadline:
        time.sleep(0.2)
        _, body, _ = world.netns.curl("http://127.0.0.1/", "-H", "Host: moving.test")
    assert body.startswith("web-moved ")


async def test_caddy_is_adopted_by_a_new_manager(manager: IngressManager, world: World) -> None:
    await manager.create("site", [rule("web.example.com", "web")])
    pid = manager.daemon.running_pid()
    assert pid is not None

    # What an Ember restart does: a new manager over the same store and data dir.
    reborn = make_manager(ingress_settings(manager.daemon.state_dir.parent), world.netns)
    await reborn.open()
    assert reborn.daemon.running_pid() == pid
    assert caddy_pids(reborn.daemon.bootstrap_file) == [pid]
    await reborn.create("api", [rule("api.example.com", "api")])
    for name in ("web", "api"):
        _, body, _ = world.netns.curl("http://127.0.0.1/", "-H", f"Host: {name}.example.com")
        assert body.startswith(f"{name} ")

    # Deleting the last ingress stops Caddy: nothing runs for nothing.
    await reborn.delete("site")
    await reborn.delete("api")
    assert reborn.daemon.running_pid() is None
    assert caddy_pids(reborn.daemon.bootstrap_file) == []


async def test_a_killed_caddy_is_started_again(manager: IngressManager, world: World) -> None:
    await manager.create("site", [rule("web.example.com", "web")])
    pid = manager.daemon.running_pid()
    assert pid is not None
    world.netns.run("kill", "-9", str(pid))
    while manager.daemon.running_pid() == pid:
        time.sleep(0.02)
    await manager.create("api", [rule("api.example.com", "api")])
    assert manager.daemon.running_pid() not in (None, pid)
    _, body, _ = world.netns.curl("http://127.0.0.1/", "-H", "Host: web.example.com")
    assert body.startswith("web ")


def caddy_upstream_connections(world: World, address: str) -> int:
    listed = world.netns.run("ss", "-tanpH", "state", "established", "dst", f"{address}:8080")
    return listed.stdout.count('"caddy"')


async def test_idle_upstream_connections_are_let_go(manager: IngressManager, world: World) -> None:
    # Caddy's default keeps an idle upstream connection 2 min; a one-connection-at-a-time
    # instance would sit on it, answering nobody else. Ours goes within about a second.
    await manager.create("site", [rule("web.example.com", "web")])
    for _ in range(3):
        status, _, _ = world.netns.curl("http://127.0.0.1/", "-H", "Host: web.example.com")
        assert status == 200
    for _ in range(100):  # a bound far above the 1 s idle timeout, not a timing check
        if caddy_upstream_connections(world, "127.0.0.2") == 0:
            break
        time.sleep(0.1)
    assert caddy_upstream_connections(world, "127.0.0.2") == 0
