"""Every field of a domain type an answer is built from is either read by the answer's
converter or listed here as deliberately not exposed, with the reason.

A renamed domain field breaks the converter under mypy (the converters are keyword
calls over typed attributes); a new domain field fails this test until someone decides
whether the API shows it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from ember.api.schemas import (
    devices,
    guest,
    host,
    images,
    ingresses,
    instances,
    snapshots,
    volumes,
)
from ember.devices import DeviceRecord, PciDevice
from ember.images.models import ImageRecord
from ember.ingress import models as ingress
from ember.instances import InstanceRecord, autostandby, capacity
from ember.instances import models as instance
from ember.snapshots import compression
from ember.snapshots import models as snapshot
from ember.volumes import Attachment, VolumeRecord

INTERNAL = "internal bookkeeping"
# (converter, domain type, fields it deliberately leaves out -> why)
CONVERTERS: list[tuple[Callable[..., Any], type, dict[str, str]]] = [
    (
        instances.Instance.of,
        InstanceRecord,
        {
            "image_digest": "the image is answered by reference",
            "entrypoint": "Hypeman's instance has no entrypoint field",
            "cmd": "Hypeman's instance has no cmd field",
            "skip_guest_agent": "a create option, not state",
            "image_config": "the image's own config, answered by GET /images",
            "pid": INTERNAL,
            "vm_devices": INTERNAL,
            "vmm_uid": INTERNAL,
            "shareable_memory": "how it boots for templates; answered by GET /templates",
            "memory_base": "which template it maps; answered as a template's clones",
            "phases": "answered through phases.describe (current_phase, phase_durations_ms)",
            "auto_standby_state": "answered by GET /instances/{id}/auto-standby/status",
        },
    ),
    (instances.RestartPolicy.of, instance.RestartPolicy, {}),
    (
        instances.RestartStatus.of,
        instance.RestartStatus,
        {
            "decided_boot": INTERNAL,
            "health_failed_boot": INTERNAL,
        },
    ),
    (instances.HealthCheck.of, instance.HealthCheck, {}),
    (instances.HealthCheckHTTP.of, instance.HealthCheckHTTP, {}),
    (instances.HealthCheckTCP.of, instance.HealthCheckTCP, {}),
    (instances.HealthCheckExec.of, instance.HealthCheckExec, {}),
    (instances.AutoStandbyPolicy.of, instance.AutoStandbyPolicy, {}),
    (instances.SnapshotPolicy.of, instance.SnapshotPolicy, {}),
    (instances.AutoStandbyStatus.of, autostandby.Report, {}),
    (
        instances.VolumeMount.of,
        Attachment,
        {
            "instance_id": "the instance is the answer itself",
            "instance_name": "the instance is the answer itself",
            "attached_at": "Hypeman's VolumeMount has no time",
        },
    ),
    (
        snapshots.Snapshot.of,
        snapshot.SnapshotRecord,
        {
            "volumes": "the copied volume disks are files of the snapshot, not API state",
            "network": "the source's network identity, used by forks",
            "source": "the source instance's record, used by forks",
            "scheduled": "whether retention may prune it; the schedule's business",
            "template": "answered by GET /templates (Ember extension)",
        },
    ),
    (snapshots.CompressionConfig.of, compression.CompressionConfig, {}),
    (
        snapshots.SnapshotSchedule.of,
        snapshot.ScheduleRecord,
        {
            "interval_seconds": "the interval is answered as given",
        },
    ),
    (
        snapshots.Retention.of,
        snapshot.Retention,
        {
            "max_age_seconds": "max_age is answered as given",
        },
    ),
    (host.ResourceStatus.of, capacity.Status, {}),
    (host.ResourceAllocation.of, capacity.Allocation, {}),
    (host.Resources.of, capacity.Usage, {}),
    (
        volumes.Volume.of,
        VolumeRecord,
        {
            "source": "how the disk was first filled (empty or an archive): history, not state",
        },
    ),
    (
        volumes.VolumeAttachment.of,
        Attachment,
        {
            "volume_id": "the volume is the answer itself",
            "overlay_size_bytes": "shown on the instance's VolumeMount",
            "instance_name": "Hypeman's VolumeAttachment names the instance by id",
            "attached_at": "Hypeman's VolumeAttachment has no time",
        },
    ),
    (ingresses.Ingress.of, ingress.IngressRecord, {}),
    (ingresses.IngressRule.of, ingress.IngressRule, {}),
    (ingresses.IngressMatch.of, ingress.IngressMatch, {}),
    (ingresses.IngressTarget.of, ingress.IngressTarget, {}),
    (ingresses.RequestHeaderAuth.of, ingress.RequestHeaderAuth, {}),
    (
        images.Image.of,
        ImageRecord,
        {
            "id": "images are named by reference; the id is internal",
            "source": "pulled or pushed: how it came, not what it is",
            "requested_platform": "the request's platform; `platform` is what was pulled",
            "user": "Hypeman's Image has no user field",
        },
    ),
    (devices.Device.of, DeviceRecord, {}),
    (
        devices.AvailableDevice.of,
        PciDevice,
        {
            "class_code": "Hypeman's AvailableDevice has no class; it decides `type`",
        },
    ),
]


def domain_fields(domain: type) -> set[str]:
    if dataclasses.is_dataclass(domain):
        return {f.name for f in dataclasses.fields(domain)}
    assert issubclass(domain, BaseModel)
    return set(domain.model_fields)


def fields_read(converter: Callable[..., Any]) -> set[str]:
    """The attributes the converter reads off its first argument (after `cls`)."""
    function = ast.parse(textwrap.dedent(inspect.getsource(converter))).body[0]
    assert isinstance(function, ast.FunctionDef)
    source = function.args.args[1].arg
    return {
        node.attr
        for node in ast.walk(function)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == source
    }


@pytest.mark.parametrize(
    ("converter", "domain", "hidden"),
    CONVERTERS,
    ids=[f"{c.__qualname__}<-{d.__name__}" for c, d, _ in CONVERTERS],
)
def test_every_domain_field_is_mapped_or_hidden(
    converter: Callable[..., Any], domain: type, hidden: dict[str, str]
) -> None:
    fields = domain_fields(domain)
    read = fields_read(converter) & fields
    assert not read & hidden.keys(), f"listed as hidden but mapped: {read & hidden.keys()}"
    assert hidden.keys() <= fields, f"hidden fields the domain lacks: {hidden.keys() - fields}"
    assert fields == read | hidden.keys(), (
        f"neither mapped nor hidden: {fields - read - hidden.keys()}"
    )


def test_guest_answers_have_no_domain_twin() -> None:
    """`stat` and `stats` answers come from the agent's reply and process figures, not a
    domain type: nothing to map."""
    assert {"exists", "error"} <= set(guest.PathInfo.model_fields)
