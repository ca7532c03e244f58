"""Templates with real VMs: one template, five clones running at once in a namespace
this module made. Each clone has its own IP, keeps the template's memory (a value the
template's program wrote before it was saved) and its own changes apart, and is unique
(kernel random state, machine-id, hostname); the template's RAM file is left untouched
by them; deleting the template is refused while they map it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypeman import Hypeman
from hypeman.lib.exec import exec as hm_exec

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns
from tests.cli.conftest import Result, cli_env, run_cli
from tests.conftest import fetch, push_to_ember, running_server

pytestmark = pytest.mark.vm
CLONES = 5
# The program keeps a value in RAM (devtmpfs), written once at boot: what clones inherit.
SERVE = ["/bin/sh", "-c", "cat /proc/sys/kernel/random/uuid > /dev/kept && exec /hello serve 8080"]
UNIQUE = "cat /proc/sys/kernel/random/uuid; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"


@pytest.fixture(scope="module")
def server(ns: str) -> Iterator[EmberServer]:
    with running_server(ns, env={"EMBER_STOP_TIMEOUT_SECONDS": "3"}) as server:
        yield server


def api(server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token()}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=300)


def run(server: EmberServer, ref: str, command: str) -> str:
    client = Hypeman(base_url=server.url, api_key=server.token(), max_retries=0, timeout=120)
    result = hm_exec(client, ref, ["sh", "-c", command], wait_for_agent=60)
    assert result.exit_code == 0, result.output
    return result.output.decode().strip()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def image(ns: str, server: EmberServer) -> str:
    return in_netns(ns, push_to_ember, server, hello_image(cmd=SERVE), "tpl", "v1")


def test_five_clones_of_one_template(ns: str, server: EmberServer, image: str) -> None:
    in_netns(ns, _five_clones_of_one_template, server, image)


def _five_clones_of_one_template(server: EmberServer, image: str) -> None:
    with api(server) as client:
        body = {"name": "web", "image": image, "size": "256MB", "vcpus": 1,
                "readiness": {"exec": ["test", "-s", "/dev/kept"], "timeout": "180s"}}  # fmt: skip
        made = client.post("/templates", json=body)
        assert made.status_code == 201, made.text
        template: dict[str, Any] = made.json()
        assert template["state"] == "Template" and template["shared_memory"]
        assert [t["id"] for t in client.get("/templates").json()] == [template["id"]]
        ram = server.data_dir / "snapshots" / template["id"] / "memory.ram"
        before = sha256(ram)

        def clone(i: int) -> dict[str, Any]:
            answer = client.post("/instances", json={"name": f"c{i}", "template": "web"})
            assert answer.status_code == 201, answer.text
            return dict(answer.json())

        with ThreadPoolExecutor(CLONES) as pool:
            clones = list(pool.map(clone, range(CLONES)))
        assert all(c["state"] == "Running" for c in clones), clones
        assert len({c["network"]["ip"] for c in clones}) == CLONES
        assert len({c["network"]["mac"] for c in clones}) == CLONES

        # Each program goes on (continued once its clone was reseeded) and serves.
        assert all("hello" in fetch(c["network"]["ip"]).lower() for c in clones)
        kept = {run(server, c["name"], "cat /dev/kept") for c in clones}
        assert len(kept) == 1 and len(kept.pop()) == 36  # the template's value, in each
        for c in clones:
            run(server, c["name"], f"echo {c['name']} > /dev/mine")
        assert [run(server, c["name"], "cat /dev/mine; hostname") for c in clones] == [
            f"{c['name']}\n{c['name']}" for c in clones
        ]
        ids = {run(server, c["name"], "cat /etc/machine-id") for c in clones}
        assert len(ids) == CLONES

        # Unique: two clones draw from their CRNGs at the same moment and never agree.
        with ThreadPoolExecutor(2) as pool:
            drawn = list(pool.map(lambda c: run(server, c["name"], UNIQUE), clones[:2]))
        first, second = (d.splitlines() for d in drawn)
        assert first[0] != second[0] and first[1] != second[1], drawn

        refused = client.delete("/templates/web")
        assert refused.status_code == 409 and refused.json()["code"] == "in_use", refused.text
        assert len(client.get("/templates/web").json()["clones"]) == CLONES

        # The clones wrote their own pages: the template's file is as it was saved.
        assert sha256(ram) == before
        for c in clones:
            assert client.delete(f"/instances/{c['id']}").status_code == 204
        assert client.delete("/templates/web").status_code == 204
        assert not ram.exists()


def test_create_with_a_template_refuses_other_fields(ns: str, server: EmberServer) -> None:
    in_netns(ns, _create_with_a_template_refuses_other_fields, server)


def _create_with_a_template_refuses_other_fields(server: EmberServer) -> None:
    with api(server) as client:
        answer = client.post("/instances", json={"name": "x", "template": "web", "vcpus": 2})
        assert answer.status_code == 400 and "vcpus" in answer.json()["message"]
        answer = client.post("/instances", json={"name": "x", "template": "nope"})
        assert answer.status_code == 404, answer.text
        answer = client.post("/instances", json={"name": "x"})
        assert answer.status_code == 400 and "image" in answer.json()["message"]


def test_the_cli_makes_clones_and_keeps_a_used_template(
    ns: str, server: EmberServer, image: str
) -> None:
    env = cli_env(server)

    def cli(*args: str) -> Result:
        return in_netns(ns, run_cli, list(args), env)

    made = cli("template", "create", "cli", image, "-m", "256MB", "--cpus", "1",
               "--ready", "test", "--ready", "-s", "--ready", "/dev/kept")  # fmt: skip
    assert made.code == 0, made.err
    assert "cli" in cli("template", "ls").out
    assert cli("run", "--template", "cli", image).code == 2  # no image with a template
    clone = cli("run", "--template", "cli", "--name", "cli-1", "-d")
    assert clone.code == 0 and "Running" in clone.out, clone.err
    refused = cli("template", "rm", "cli")
    assert refused.code != 0 and "in use" in refused.err, refused
    assert cli("rm", "-f", "cli-1").code == 0
    assert cli("template", "rm", "cli").code == 0
