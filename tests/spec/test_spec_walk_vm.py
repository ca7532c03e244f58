"""The walk of `test_spec_walk.py` for the operations that need a running instance.

One instance boots (and boots again once, for `start`); snapshots, forks and the
volume attach run on it while it is stopped or in standby, so at most one VM runs
at a time. Every answer, success or refusal, is validated against the spec."""

from __future__ import annotations

import pytest

from ember.testkit.ember_server import EmberServer
from tests.spec.catalogue import WALKED_WITH_VM
from tests.spec.openapi_check import Walk

pytestmark = pytest.mark.vm
SIZE = {"size": "256MB", "vcpus": 1}


def test_walk_with_vm(ember_server: EmberServer, hello_ready: str, walk: Walk) -> None:
    policies = {
        "restart_policy": {"policy": "on_failure"},
        "health_check": {"type": "exec", "exec": {"command": ["/hello"]}},
        "auto_standby": {"enabled": False},
        "snapshot_policy": {"compression": {"enabled": True, "algorithm": "lz4"}},
    }
    body = {"name": "walked", "image": hello_ready, "cmd": ["/hello", "serve"], **SIZE}
    instance = walk.json("createInstance", json={**body, **policies}, expect=201)
    assert policies.keys() <= instance.keys()
    walk.call("createInstance", json=body, expect=409)  # the name is taken
    ref = instance["id"]
    walk_running(walk, ref)
    walk_standby(walk, ref)
    walk_stopped(walk, ref)
    walk.call("startInstance", ref, expect=200)
    walk.call("startInstance", ref, expect=409)
    walk.call("deleteInstance", ref, expect=204)
    assert walk.called >= WALKED_WITH_VM, WALKED_WITH_VM - walk.called
    assert not walk.violations, "\n".join(walk.violations)


def walk_running(walk: Walk, ref: str) -> None:
    walk.call("getInstance", ref, expect=200)
    walk.call(
        "waitForInstanceState", ref, params={"state": "Running", "timeout": "60s"}, expect=200
    )
    running = walk.json("listInstances", params={"state": "Running"}, expect=200)
    assert [i["id"] for i in running] == [ref]
    walk.call("updateInstance", ref, json={"tags": {"walked": "yes"}}, expect=200)
    walk.call("updateInstance", ref, json={"ttl": "soon"}, expect=400)
    walk.call("statInstancePath", ref, params={"path": "/hello"}, expect=200)
    missing = walk.json("statInstancePath", ref, params={"path": "/nothere"}, expect=200)
    assert missing["exists"] is False
    walk.call("getInstanceStats", ref, expect=200)
    walk.call("getResources", expect=200)  # with the instance's allocation
    walk.call("getInstanceLogs", ref, params={"tail": "5"}, expect=200)
    walk.call("getAutoStandbyStatus", ref, expect=200)
    walk.call("holdAutoStandby", ref, expect=200)
    schedule = {"interval": "1h", "retention": {"max_count": 2}}
    walk.call("setInstanceSnapshotSchedule", ref, json=schedule, expect=200)
    walk.call("setInstanceSnapshotSchedule", ref, json={"interval": "1s"}, expect=400)
    walk.call("getInstanceSnapshotSchedule", ref, expect=200)
    walk.call("deleteInstanceSnapshotSchedule", ref, expect=204)
    walk.call("getInstanceSnapshotSchedule", ref, expect=404)
    rule = {
        "match": {"hostname": "walked.test", "port": 18080},
        "target": {"instance": ref, "port": 8080},
        "request_header_auth": {"header": "X-Walk-Key", "value": "k" * 40},
    }
    ingress = walk.json("createIngress", json={"name": "walked", "rules": [rule]}, expect=201)
    walk.call("createIngress", json={"name": "walked", "rules": [rule]}, expect=409)
    walk.call("getIngress", ingress["id"], expect=200)
    walk.call("deleteIngress", ingress["id"], expect=204)
    walk.call("restoreInstance", ref, expect=409)  # not in standby


def walk_standby(walk: Walk, ref: str) -> None:
    walk.call("standbyInstance", ref, expect=200)
    walk.call("standbyInstance", ref, expect=409)
    snapshot = walk.json(
        "createInstanceSnapshot",
        ref,
        json={"kind": "Standby", "name": "walked-1", "compression": {"enabled": True}},
        expect=201,
    )
    walk.call("createInstanceSnapshot", ref, json={"kind": "Sideways"}, expect=400)
    walk.call("getSnapshot", snapshot["id"], expect=200)
    walk.call("listSnapshots", expect=200)
    walk.call(
        "forkSnapshot", snapshot["id"], json={"name": "walked-fork", "target_state": "Stopped"},
        expect=201,
    )  # fmt: skip
    walk.call("forkSnapshot", snapshot["id"], json={"name": "walked-fork"}, expect=409)
    walk.call("deleteInstance", "walked-fork", expect=204)
    walk.call("restoreInstance", ref, expect=200)
    walk.call("deleteSnapshot", snapshot["id"], expect=204)


def walk_stopped(walk: Walk, ref: str) -> None:
    walk.call("stopInstance", ref, expect=200)
    walk.call("stopInstance", ref, expect=409)
    walk.call("getResources", expect=200)  # a stopped instance holds no CPU or memory
    snapshot = walk.json("createInstanceSnapshot", ref, json={"kind": "Stopped"}, expect=201)
    walk.call(
        "restoreInstanceSnapshot", ref, snapshot["id"], json={"target_state": "Stopped"},
        expect=200,
    )  # fmt: skip
    walk.call("forkInstance", ref, json={"name": "walked-copy"}, expect=201)
    walk.call("forkInstance", ref, json={"name": "walked-copy"}, expect=409)
    walk.call("deleteInstance", "walked-copy", expect=204)
    walk.call("attachVolume", ref, "nothere", json={"mount_path": "/data"}, expect=404)
    volume = walk.client.post("/volumes", json={"name": "walked", "size_gb": 1}).json()
    walk.call("attachVolume", ref, volume["id"], json={"mount_path": "/data"}, expect=200)
    walk.call("deleteVolume", volume["id"], expect=409)  # attached
    walk.call("detachVolume", ref, volume["id"], expect=200)
    walk.call("deleteSnapshot", snapshot["id"], expect=204)
