"""Every operation of Hypeman's OpenAPI 0.3.0 called on a real server, each answer
validated against the spec's schema for its status (see `openapi_check.py`).

This module walks what needs no VM: the host, images, volumes, devices and every
error answer of the instance, snapshot and ingress routes; `test_spec_walk_vm.py`
walks the successes that need a running instance."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ember.testkit import hello_image, push
from ember.testkit.ember_server import EmberServer
from tests.conftest import wait_image
from tests.spec.catalogue import KNOWN_MISSING, WALKED_WITH_VM, WALKED_WITHOUT_VM
from tests.spec.openapi_check import Walk, check, operations
from tests.volumes.archives import Entry, make_archive

pytestmark = pytest.mark.server  # starts a real `ember serve`

MISSING = "nothere"  # an id no resource has
# (operation, path parameters) of every operation on one instance: each answers 404.
INSTANCE_ROUTES = [
    ("getInstance", 1), ("updateInstance", 1), ("deleteInstance", 1), ("standbyInstance", 1),
    ("restoreInstance", 1), ("forkInstance", 1), ("createInstanceSnapshot", 1),
    ("getInstanceSnapshotSchedule", 1), ("setInstanceSnapshotSchedule", 1),
    ("deleteInstanceSnapshotSchedule", 1), ("restoreInstanceSnapshot", 2), ("stopInstance", 1),
    ("startInstance", 1), ("getInstanceLogs", 1), ("statInstancePath", 1),
    ("waitForInstanceState", 1), ("getAutoStandbyStatus", 1), ("holdAutoStandby", 1),
    ("getInstanceStats", 1), ("attachVolume", 2), ("detachVolume", 2),
]  # fmt: skip
# A valid body per operation that takes one, so that the 404 is about the instance.
BODIES: dict[str, dict[str, object]] = {
    "updateInstance": {"tags": {"a": "b"}},
    "forkInstance": {"name": "forked"},
    "createInstanceSnapshot": {"kind": "Stopped"},
    "setInstanceSnapshotSchedule": {"interval": "1h", "retention": {"max_count": 2}},
    "restoreInstanceSnapshot": {},
    "attachVolume": {"mount_path": "/data"},
    "forkSnapshot": {"name": "forked"},
}
QUERIES: dict[str, dict[str, str]] = {
    "statInstancePath": {"path": "/"},
    "waitForInstanceState": {"state": "Running", "timeout": "1s"},
}


def test_every_operation_is_walked_or_known_missing() -> None:
    covered = WALKED_WITHOUT_VM | WALKED_WITH_VM | set(KNOWN_MISSING)
    assert set(operations()) == covered, set(operations()) ^ covered


def test_walk_without_vm(ember_server: EmberServer, walk: Walk) -> None:
    walk_host(walk)
    walk_images(ember_server, walk)
    walk_pushes(ember_server, walk)
    walk_volumes(walk)
    walk_devices(walk)
    walk_builds(walk)
    walk_refusals(walk)
    walk_known_missing(walk)
    assert walk.called >= WALKED_WITHOUT_VM, WALKED_WITHOUT_VM - walk.called
    assert not walk.violations, "\n".join(walk.violations)


def walk_host(walk: Walk) -> None:
    walk.call("getHealth", expect=200)
    walk.call("getCapabilities", expect=200)
    walk.call("getResources", expect=200)
    walk.call("reclaimMemory", json={"reclaim_bytes": 1 << 20, "dry_run": True}, expect=200)
    walk.call("reclaimMemory", json={"reclaim_bytes": -1}, expect=400)


def walk_images(server: EmberServer, walk: Walk) -> None:
    image = hello_image()
    push(image, server.url, "hello", "latest", token=server.token())
    push(image, server.url, "hello", "spare", token=server.token())
    name = f"127.0.0.1:{server.port}/hello:latest"
    for tag in ("latest", "spare"):
        assert wait_image(server, f"127.0.0.1:{server.port}/hello:{tag}")["status"] == "ready"
    walk.call("createImage", json={"name": name}, expect=202)
    walk.call("createImage", json={"name": "UPPER CASE"}, expect=400)
    # Accepted at once, pulled later (it fails: no such repository): a pending answer.
    pending = f"127.0.0.1:{server.port}/nothere:1"
    assert walk.json("createImage", json={"name": pending}, expect=202)["status"] != "ready"
    walk.call("listImages", expect=200)
    walk.call("getImage", name, expect=200)
    walk.call("getImage", "nothere:latest", expect=404)
    walk.call("deleteImage", f"127.0.0.1:{server.port}/hello:spare", expect=204)
    walk.call("deleteImage", "nothere:latest", expect=404)


def walk_pushes(server: EmberServer, walk: Walk) -> None:
    """Accepted, listed and got; the push itself fails later (nothing listens on port 1):
    `tests/pushes` pushes to real registries."""
    image = f"127.0.0.1:{server.port}/hello:latest"
    target = "127.0.0.1:1/copies/hello:v1"
    pushed = walk.json("createPush", json={"image": image, "target": target}, expect=202)
    walk.call("createPush", json={"image": "nothere:latest", "target": target}, expect=404)
    walk.call("createPush", json={"image": image, "target": "Not A Ref"}, expect=400)
    walk.call("listPushes", expect=200)
    walk.call("getPush", pushed["id"], expect=200)
    walk.call("getPush", MISSING, expect=404)


def walk_volumes(walk: Walk) -> None:
    volume = walk.json("createVolume", json={"name": "data", "size_gb": 1}, expect=201)
    walk.call("createVolume", json={"name": "data", "size_gb": 1}, expect=409)
    walk.call("createVolume", json={"name": "Bad Name", "size_gb": 1}, expect=400)
    archive = make_archive([Entry("hello.txt", data=b"hi")])
    walk.call(
        "createVolumeFromArchive",
        params={"name": "unpacked", "size_gb": 1},
        content=archive,
        headers={"Content-Type": "application/gzip"},
        expect=201,
    )
    walk.call(
        "createVolumeFromArchive",
        params={"name": "broken", "size_gb": 1},
        content=b"not a tar.gz",
        headers={"Content-Type": "application/gzip"},
        expect=400,
    )
    walk.call("listVolumes", expect=200)
    walk.call("getVolume", volume["id"], expect=200)
    walk.call("getVolume", MISSING, expect=404)
    walk.call("deleteVolume", volume["id"], expect=204)
    walk.call("deleteVolume", MISSING, expect=404)


def walk_builds(walk: Walk) -> None:
    """Builders whole; builds up to where a server without a network refuses them (409):
    the builds that run are in tests/builds/test_builds_vm.py."""
    builder = walk.json("createBuilder", json={"id": "b1", "name": "ci", "disk_size_gb": 1},
                        expect=201)  # fmt: skip
    assert builder["queued_builds"] == [] and builder["max_concurrency"] == 1
    walk.call("createBuilder", json={"id": "b1"}, expect=409)
    walk.call("createBuilder", json={"disk_size_gb": 0}, expect=400)
    walk.call("listBuilders", expect=200)
    walk.call("getBuilder", "b1", expect=200)
    walk.call("getBuilder", MISSING, expect=404)
    walk.call("pruneBuilder", "b1", expect=202)
    walk.call("pruneBuilder", MISSING, expect=404)
    source = {"source": ("app.tar.gz", make_archive([Entry("Dockerfile", data=b"FROM x\n")]))}
    walk.call("createBuild", files=source, data={"builder_id": "b1"}, expect=409)  # no network
    walk.call("createBuild", files=source, data={"builder_id": MISSING}, expect=404)
    walk.call("createBuild", files=source, data={"cpus": "many"}, expect=400)
    walk.call("listBuilds", expect=200)
    walk.call("getBuild", MISSING, expect=404)
    walk.call("cancelBuild", MISSING, expect=404)
    walk.call("getBuildEvents", MISSING, expect=404)
    walk.call("deleteBuilder", "b1", expect=204)
    walk.call("deleteBuilder", MISSING, expect=404)


def walk_devices(walk: Walk) -> None:
    walk.call("listDevices", expect=200)
    assert walk.json("listAvailableDevices", expect=200) == []  # no passthrough hardware here
    walk.call("createDevice", json={"pci_address": "0000:ff:1f.7"}, expect=404)
    walk.call("createDevice", json={"pci_address": "not-a-pci-address"}, expect=400)
    for device in sorted(Path("/sys/bus/pci/devices").glob("*")):
        if not (device / "iommu_group").exists():  # this host's are all such
            refused = walk.call("createDevice", json={"pci_address": device.name}, expect=409)
            assert "IOMMU" in refused.json()["message"]
            break
    walk.call("getDevice", MISSING, expect=404)
    walk.call("deleteDevice", MISSING, expect=404)


def walk_refusals(walk: Walk) -> None:
    """Every instance, snapshot and ingress route on what does not exist; bad bodies."""
    for op_id, arity in INSTANCE_ROUTES:
        params = (MISSING,) * arity
        walk.call(op_id, *params, json=BODIES.get(op_id), params=QUERIES.get(op_id), expect=404)
    walk.call("listInstances", expect=200)
    walk.call("createInstance", json={"name": "x", "image": "nothere:latest"}, expect=404)
    walk.call("createInstance", json={"name": "x", "image": "a", "vcpus": "many"}, expect=400)
    walk.call("listSnapshots", expect=200)
    walk.call("getSnapshot", MISSING, expect=404)
    walk.call("deleteSnapshot", MISSING, expect=404)
    walk.call("forkSnapshot", MISSING, json=BODIES["forkSnapshot"], expect=404)
    walk.call("listIngresses", expect=200)
    walk.call("getIngress", MISSING, expect=404)
    walk.call("deleteIngress", MISSING, expect=404)
    walk.call("createIngress", json={"name": "web", "rules": []}, expect=400)
    anonymous = httpx.get(f"{walk.client.base_url}/instances")
    if anonymous.status_code != 401:
        walk.violations.append(f"listInstances without a token: {anonymous.status_code}")
    walk.violations.extend(
        f"listInstances without a token: {problem}"
        for problem in check(operations()["listInstances"], anonymous, walk)
    )


def walk_known_missing(walk: Walk) -> None:
    """Absent for the reason given: Ember's own document has no such operation, so a
    route that appears must be walked instead of staying listed here."""
    documented = {(route, method) for route, method, _ in walk.extensions}
    for op_id in KNOWN_MISSING:
        op = operations()[op_id]
        if (op.route(), op.method) in documented:
            walk.violations.append(f"{op_id} is listed as missing but Ember serves it")
