"""Operations of Hypeman's spec that Ember does not have yet, each with the reason.

The walk proves each one really is absent (404 or 405 on its route), so a route
that appears without being walked fails the test instead of going unchecked."""

from __future__ import annotations

# Operations of the spec Ember does not answer yet, with the reason (none today).
KNOWN_MISSING: dict[str, str] = {}

# Operations only a running (or once-running) instance can answer with success: walked by
# `test_spec_walk_vm.py` (their refusals are walked without a VM too).
WALKED_WITH_VM: frozenset[str] = frozenset(
    {
        "createInstance", "getInstance", "listInstances", "updateInstance", "deleteInstance",
        "stopInstance", "startInstance", "standbyInstance", "restoreInstance", "forkInstance",
        "createInstanceSnapshot", "restoreInstanceSnapshot", "getSnapshot", "listSnapshots",
        "deleteSnapshot", "forkSnapshot", "getInstanceSnapshotSchedule",
        "setInstanceSnapshotSchedule", "deleteInstanceSnapshotSchedule", "getInstanceLogs",
        "statInstancePath", "waitForInstanceState", "getAutoStandbyStatus", "holdAutoStandby",
        "getInstanceStats", "attachVolume", "detachVolume", "createIngress", "getIngress",
        "deleteIngress",
    }
)  # fmt: skip

# Operations walked without a VM (`test_spec_walk.py`): their successes need no instance.
WALKED_WITHOUT_VM: frozenset[str] = frozenset(
    {
        "getHealth", "getCapabilities", "getResources", "reclaimMemory", "listImages",
        "createImage", "getImage", "deleteImage", "listVolumes", "createVolume",
        "createVolumeFromArchive", "getVolume", "listBuilds", "createBuild", "getBuild",
        "cancelBuild", "getBuildEvents", "listBuilders", "createBuilder", "getBuilder",
        "deleteBuilder", "pruneBuilder",
        "deleteVolume", "listDevices", "createDevice", "listAvailableDevices", "getDevice",
        "deleteDevice", "listIngresses", "listPushes", "createPush", "getPush",
    }
)  # fmt: skip
