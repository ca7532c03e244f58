"""`/ingresses` through a real `ember serve` and the official client.

The server's Caddy listens on loopback only (EMBER_INGRESS_LISTEN_ADDRESS): pattern
rules need no instance to exist, so no VM boots here; requests through the ingress
go to loopback and end in the clear "instance unavailable" answer.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest
from hypeman import BadRequestError, ConflictError, Hypeman, NotFoundError
from hypeman.types import IngressRuleParam

from ember.ingress import admin_socket_path
from ember.testkit.ember_server import EmberServer
from ember.testkit.registry_server import free_port
from tests.conftest import scratch_dir
from tests.ingress.conftest import caddy_pids

pytestmark = pytest.mark.server  # starts a real `ember serve`


@pytest.fixture
def server() -> Iterator[EmberServer]:
    with scratch_dir() as work:
        server = EmberServer(
            work / "data",
            env={
                "EMBER_RUNTIME_DIR": str(work / "run"),
                "EMBER_INGRESS_LISTEN_ADDRESS": "127.0.0.1",
                # Nothing answers there: names resolve to nothing, at once.
                "EMBER_NETWORK_DNS_LISTEN": f"127.0.0.1:{free_port()}",
            },
        ).start()
        bootstrap = server.data_dir / "caddy" / "bootstrap.json"
        try:
            yield server
        finally:
            server.stop()
            leftover = caddy_pids(bootstrap)
            for pid in leftover:
                subprocess.run(["kill", "-9", str(pid)], check=False)
            assert leftover == [], "Caddy outlived its last ingress"


def test_create_list_get_delete_with_the_official_client(server: EmberServer) -> None:
    client = Hypeman(base_url=server.url, api_key=server.token())
    http_port, tls_port = free_port(), free_port()
    rule: IngressRuleParam = {
        "match": {"hostname": "{instance}.apps.test", "port": http_port},
        "target": {"instance": "{instance}", "port": 8080},
    }
    created = client.ingresses.create(name="apps", rules=[rule], tags={"team": "a"})
    assert created.name == "apps" and created.tags == {"team": "a"}
    assert created.rules[0].match.port == http_port
    assert created.rules[0].tls is False

    secure = client.ingresses.create(
        name="secure",
        rules=[
            {
                "match": {"hostname": "{app}.tls.test", "port": tls_port},
                "target": {"instance": "{app}", "port": 8443},
                "tls": True,
            }
        ],
    )
    assert [i.name for i in client.ingresses.list()] == ["apps", "secure"]
    assert [i.name for i in client.ingresses.list(tags={"team": "a"})] == ["apps"]
    assert client.ingresses.get("apps").id == created.id
    assert client.ingresses.get(created.id).name == "apps"

    with pytest.raises(ConflictError):
        client.ingresses.create(name="again", rules=[rule])
    with pytest.raises(BadRequestError, match="instance 'nobody' not found"):
        client.ingresses.create(
            name="ghost",
            rules=[{"match": {"hostname": "x.test"}, "target": {"instance": "nobody", "port": 80}}],
        )

    # Through Caddy (loopback): no instance answers for the name, and says so at once.
    answer = httpx.get(f"http://127.0.0.1:{http_port}/", headers={"Host": "web.apps.test"})
    assert answer.status_code in (502, 503)
    assert "instance unavailable for web.apps.test" in answer.text

    auth = {"Authorization": f"Bearer {server.token()}"}
    ca = httpx.get(f"{server.url}/ingresses/ca.pem", headers=auth)
    assert ca.status_code == 200
    assert ca.text.startswith("-----BEGIN CERTIFICATE-----")
    assert httpx.get(f"{server.url}/ingresses/ca.pem").status_code == 401

    client.ingresses.delete(secure.id)
    client.ingresses.delete("apps")
    assert client.ingresses.list() == []
    with pytest.raises(NotFoundError):
        client.ingresses.get("apps")
    # The last ingress gone, no Caddy runs and its admin socket is gone.
    assert caddy_pids(server.data_dir / "caddy" / "bootstrap.json") == []
    socket = admin_socket_path(server.data_dir.parent / "run", server.data_dir)
    assert not socket.exists()
