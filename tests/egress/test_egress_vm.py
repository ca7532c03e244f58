"""Credential brokering and egress policy end to end: one real VM, the official client,
an HTTPS server in the test's namespace standing in for an external API.

The guest runs a certificate-verifying client (`https-get`) that knows nothing of
proxies: nftables steers its TCP to Ember's proxy, which injects the real header for
the credentialed name and refuses by name and by address once the policy, changed
while the VM runs, says so.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ember.egress.ca import CA_CERT
from ember.testkit.ember_server import EmberServer
from ember.testkit.https_upstream import https_upstream
from ember.testkit.image import https_client_image
from ember.testkit.netns import in_netns
from tests.conftest import push_to_ember, running_server, scratch_dir

pytestmark = pytest.mark.vm
API, BLOCKED, OTHER = "api.example.test", "blocked.example.test", "other.example.test"
ALLOWED_IP, DENIED_IP = "10.77.0.1", "10.78.0.1"
SECRET = "sk-real-" + secrets.token_hex(12)
ROTATED = "sk-rotated-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def upstream(ns: str) -> Iterator[tuple[Path, Path]]:
    """The CA directory and request log of an HTTPS server on two addresses of the
    namespace (one of which the policy will deny)."""
    with scratch_dir() as scratch, https_upstream(ns, scratch, [ALLOWED_IP, DENIED_IP]) as up:
        yield up


@pytest.fixture(scope="module")
def server(ns: str, upstream: tuple[Path, Path]) -> Iterator[EmberServer]:
    env = {"EMBER_EGRESS_UPSTREAM_CAFILE": str(upstream[0] / CA_CERT)}
    with running_server(ns, env=env) as server:
        yield server


def https_get(name: str, ip: str, header: bool = False) -> list[str]:
    auth = ' "Authorization: Bearer $OUTBOUND_KEY"' if header else ""
    return ["sh", "-c", f"/https-get {name} {ip} 443 / 1{auth} 2>&1"]


def scenario(server: EmberServer, upstream_ca: bytes) -> dict[str, Any]:
    from hypeman import Hypeman
    from hypeman.lib.exec import exec as guest_exec

    # The image trusts the upstream's CA (as images trust public CAs): names without a
    # credential reach it unintercepted.
    image = push_to_ember(server, https_client_image(upstream_ca), "https-client", "egress")
    official = Hypeman(base_url=server.url, api_key=server.token(), max_retries=0)
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token()}"})
    official.instances.create(
        name="broker", image=image, size="256MB", vcpus=1, overlay_size="128MB",
        cmd=["sleep", "3600"], env={"OUTBOUND_KEY": SECRET},
        credentials={"OUTBOUND_KEY": {
            "source": {"env": "OUTBOUND_KEY"},
            "inject": [{"hosts": [API], "as": {"header": "Authorization",
                                                "format": "Bearer ${value}"}}],
        }},
        network={"egress": {"enabled": True}},
    )  # fmt: skip
    assert official.instances.wait("broker", state="Running", api_timeout="120s").state == "Running"

    def run(command: list[str]) -> str:
        result = guest_exec(official, "broker", command, wait_for_agent=60)
        return f"exit={result.exit_code}\n{result.output.decode(errors='replace')}"

    seen: dict[str, Any] = {"guest_env": run(["sh", "-c", "env; tr '\\0' '\\n' </proc/1/environ"])}
    seen["brokered"] = run(https_get(API, ALLOWED_IP, header=True))
    seen["spliced"] = run(https_get(OTHER, ALLOWED_IP, header=True))
    changed = api.patch("/instances/broker/egress",
                        json={"policy": {"deny": [BLOCKED, "10.78.0.0/24"]}})  # fmt: skip
    seen["policy"] = (changed.status_code, changed.json())
    seen["by_name"] = run(https_get(BLOCKED, ALLOWED_IP))
    seen["by_address"] = run(https_get(API, DENIED_IP))
    seen["raw_tcp"] = run(["sh", "-c", f"/https-get - {DENIED_IP} 9 2>&1"])
    official.instances.update("broker", env={"OUTBOUND_KEY": ROTATED})
    seen["rotated"] = run(https_get(API, ALLOWED_IP, header=True))
    seen["flows"] = api.get("/instances/broker/egress/flows").json()
    # A saved VM (device state, memory, disks, record) of the brokered guest.
    snapshot = official.instances.snapshots.create("broker", kind="Standby", name="brokered")
    seen["answers"] = "".join(
        api.get(path).text
        for path in ("/instances/broker", "/instances/broker/egress", f"/snapshots/{snapshot.id}")
    )
    official.instances.delete("broker")
    seen["rules_after_delete"] = subprocess.run(
        ["nft", "list", "table", "inet", "ember_egress"], capture_output=True, text=True
    ).stdout
    return seen


def test_brokered_credentials_and_a_live_policy(
    server: EmberServer, ns: str, upstream: tuple[Path, Path]
) -> None:
    seen = in_netns(ns, scenario, server, (upstream[0] / CA_CERT).read_bytes())
    requests = [json.loads(line) for line in upstream[1].read_text().splitlines()]

    # The guest holds a placeholder; the server got the real value, the guest only the answer.
    assert "OUTBOUND_KEY=ember-placeholder-" in seen["guest_env"]
    assert "exit=0" in seen["brokered"] and "hello from upstream" in seen["brokered"]
    assert requests[0] == {"host": API, "authorization": f"Bearer {SECRET}"}
    # Another name passes unchanged: its own TLS end to end, the guest's placeholder as sent.
    assert "hello from upstream" in seen["spliced"]
    assert requests[1]["host"] == OTHER
    assert requests[1]["authorization"].startswith("Bearer ember-placeholder-")
    # Changed while running: one name and one CIDR refused, each with a readable reason.
    assert seen["policy"][0] == 200, seen["policy"]
    assert "403 Forbidden" in seen["by_name"] and f"denied by {BLOCKED}" in seen["by_name"]
    assert "403 Forbidden" in seen["by_address"] and "denied by 10.78.0.0/24" in seen["by_address"]
    # A rotated value is used from the next request on, without a restart.
    assert "hello from upstream" in seen["rotated"]
    assert requests[-1] == {"host": API, "authorization": f"Bearer {ROTATED}"}
    assert len(requests) == 3  # the refused requests never left the host

    assert "reset" in seen["raw_tcp"].lower(), seen["raw_tcp"]  # not HTTP: a TCP reset
    flows = {(f["host"], f["destination"], f["action"]) for f in seen["flows"]}
    assert (API, ALLOWED_IP, "allowed") in flows and (OTHER, ALLOWED_IP, "allowed") in flows
    assert (BLOCKED, ALLOWED_IP, "refused") in flows
    assert (API, DENIED_IP, "refused") in flows
    injected = [(f["host"], f["destination"]) for f in seen["flows"] if f["credentials"]]
    assert injected == [(API, ALLOWED_IP)] * 2  # the first request and the rotated one

    # The real values are nowhere but the egress state: not in the guest, the answers,
    # the store, the logs, the instance's disks or the snapshot (metadata, memory, disks).
    for text in (*(v for k, v in seen.items() if isinstance(v, str)), json.dumps(seen["flows"])):
        assert SECRET not in text and ROTATED not in text
    leaks = [path for path in [*server.data_dir.rglob("*"), *server.data_dir.parent.glob("*.log")]
             if path.is_file() and path.name != "state.json"
             and any(s.encode() in path.read_bytes() for s in (SECRET, ROTATED))]  # fmt: skip
    assert leaks == []
    # Delete released it all: no rules for the guest, no state, CA or log left.
    assert "redirect" not in seen["rules_after_delete"]
    assert list((server.data_dir / "egress").iterdir()) == []
