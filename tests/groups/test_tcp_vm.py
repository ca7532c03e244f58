"""A plain TCP service with a real VM: one Ember in a namespace this module made, a
guest running busybox `nc -ll -e cat` (an echo server), connections from inside the
namespace to the host port. Echo through the proxy, the hard limit's immediate close,
scale to zero, and the next connection waking the instance and being served; and a
TLS-terminated service: TLS with the certificate Caddy issued for the group's domain,
plain bytes to the guest; and a UDP service whose standby instance a datagram wakes."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns
from tests.conftest import push_to_ember, running_server
from tests.groups.test_groups_vm import api, guest_image, instance, restores, wait_state

pytestmark = pytest.mark.vm
PORT = 9000
TLS_PORT = 9443
UDP_PORT = 5353
ECHO = ["/bin/sh", "-c", "exec nc -ll -p 7000 -e cat"]


@pytest.fixture(scope="module")
def server(ns: str) -> Iterator[EmberServer]:
    env = {"EMBER_STOP_TIMEOUT_SECONDS": "3", "EMBER_GUEST_MEMORY_FILE": "always"}
    with running_server(ns, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def image(ns: str, server: EmberServer) -> str:
    return in_netns(ns, push_to_ember, server, guest_image(), "groups-tcp", "echo")


@pytest.fixture(scope="module")
def hello(ns: str, server: EmberServer) -> str:
    return in_netns(ns, push_to_ember, server, hello_image(), "groups-udp", "hello")


def echoes(conn: socket.socket, text: bytes) -> bytes:
    conn.sendall(text)
    got = b""
    while len(got) < len(text) and (chunk := conn.recv(4096)):
        got += chunk
    return got


def connect() -> socket.socket:
    return socket.create_connection(("127.0.0.1", PORT), timeout=120)


def _tcp_service_echoes_limits_and_wakes(server: EmberServer, image: str) -> None:
    with api(server) as client:
        service = {"port": PORT, "destination_port": 7000, "handlers": []}
        made = client.post("/service-groups", json={"name": "echo", "services": [service],
                                                    "hard_limit": 1})  # fmt: skip
        assert made.status_code == 201, made.text
        policy = {"policy": "idle", "stateful": True, "cooldown_time_ms": 600_000}
        instance(client, image, "t", cmd=ECHO, service_group={"name": "echo"},
                 scale_to_zero=policy)  # fmt: skip
        wait_state(client, "t", "Running")
        # Held until nc listens, then echoed by the guest.
        with connect() as first:
            assert echoes(first, b"hello\n") == b"hello\n"
            # hard_limit 1: a second connection while the first is open is closed at once
            # (an EOF, while the first one still holds the instance).
            with connect() as second:
                second.settimeout(60)
                assert second.recv(4096) == b""
            assert echoes(first, b"still\n") == b"still\n"
        short = {**policy, "cooldown_time_ms": 1000}
        assert client.patch("/instances/t", json={"scale_to_zero": short}).status_code == 200
        asleep = wait_state(client, "t", "Standby", timeout=60)
        assert asleep["stop_reason"] == 7
        restored = restores(client, "t")
        # The next connection wakes it (one restore) and is served by the guest.
        with connect() as woken:
            assert echoes(woken, b"awake?\n") == b"awake?\n"
            assert client.get("/instances/t").json()["state"] == "Running"
            time.sleep(2)  # past the cooldown: the open connection keeps it up
            assert client.get("/instances/t").json()["state"] == "Running"
            assert echoes(woken, b"yes\n") == b"yes\n"
        assert restores(client, "t") == restored + 1
        assert client.delete("/instances/t").status_code == 204
        assert client.delete("/service-groups/echo").status_code == 204


def test_tcp_service_echoes_limits_and_wakes(ns: str, server: EmberServer, image: str) -> None:
    in_netns(ns, _tcp_service_echoes_limits_and_wakes, server, image)


def _tls_service_ends_tls_at_the_host(server: EmberServer, image: str) -> None:
    with api(server) as client:
        service = {"port": TLS_PORT, "destination_port": 7000, "handlers": ["tls"]}
        body = {"name": "secure", "services": [service], "domains": [{"name": "echo.test"}]}
        made = client.post("/service-groups", json=body)
        assert made.status_code == 201, made.text
        instance(client, image, "s", cmd=ECHO, service_group={"name": "secure"})
        wait_state(client, "s", "Running")
        trusted = ssl.create_default_context(cadata=client.get("/ingresses/ca.pem").text)
        with (
            socket.create_connection(("127.0.0.1", TLS_PORT), timeout=120) as raw,
            trusted.wrap_socket(raw, server_hostname="echo.test") as conn,
        ):
            # The handshake checked the name and Ember's CA; the guest echoes plain bytes.
            assert echoes(conn, b"over tls\n") == b"over tls\n"
        assert client.delete("/instances/s").status_code == 204
        assert client.delete("/service-groups/secure").status_code == 204


def test_tls_service_ends_tls_at_the_host(ns: str, server: EmberServer, image: str) -> None:
    in_netns(ns, _tls_service_ends_tls_at_the_host, server, image)


def udp_answer(port: int, text: bytes, timeout: float = 120) -> bytes:
    """Send `text` (again each second: UDP may lose it while the guest starts) until
    it comes back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.sendto(text, ("127.0.0.1", port))
            try:
                return sock.recv(4096)
            except TimeoutError:
                continue
    raise AssertionError(f"no answer from port {port} in {timeout:.0f} s")


def _udp_service_answers_and_a_datagram_wakes(server: EmberServer, hello: str) -> None:
    with api(server) as client:
        service = {"port": UDP_PORT, "destination_port": 7053, "protocol": "udp"}
        made = client.post("/service-groups", json={"name": "dns", "services": [service]})
        assert made.status_code == 201, made.text
        instance(client, hello, "u", cmd=["/hello", "udp-echo", "7053"],
                 service_group={"name": "dns"})  # fmt: skip
        wait_state(client, "u", "Running")
        assert udp_answer(UDP_PORT, b"query 1") == b"query 1"
        assert client.post("/instances/u/standby").status_code == 200
        restored = restores(client, "u")
        # A new client's datagram wakes it (one restore) and the guest answers it.
        assert udp_answer(UDP_PORT, b"query 2") == b"query 2"
        assert client.get("/instances/u").json()["state"] == "Running"
        assert restores(client, "u") == restored + 1
        assert client.delete("/instances/u").status_code == 204
        assert client.delete("/service-groups/dns").status_code == 204


def test_udp_service_answers_and_a_datagram_wakes(ns: str, server: EmberServer, hello: str) -> None:
    in_netns(ns, _udp_service_answers_and_a_datagram_wakes, server, hello)
