"""The create plan: every invalid field refused by name, before any side effect."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from ember.errors import EmberError, InvalidArgument
from ember.hypervisor import resolve_hypervisors
from ember.images.models import ImageRecord, ImageStatus
from ember.instances.layout import Layout
from ember.instances.plan import (
    MIN_MEMORY_BYTES,
    BootDevices,
    HostLimits,
    guest_config,
    keeps_memory_in_file,
    plan_create,
    vm_spec,
)
from ember.instances.request import CreateInstanceRequest
from ember.system import BootArtifacts

LIMITS = HostLimits(max_vcpus=2, host_cpus=2, memory_bytes=4 << 30)
IMAGE = ImageRecord(
    id="i" * 24,
    name="127.0.0.1:1/hello:latest",
    status=ImageStatus.READY,
    digest="sha256:" + "a" * 64,
    platform="linux/amd64",
    cmd=["/hello"],
    env={"PATH": "/bin"},
)


def plan(**fields: Any) -> Any:
    request = CreateInstanceRequest.model_validate({"name": "web", "image": IMAGE.name, **fields})
    return plan_create(
        request,
        instance_id="x" * 24,
        image=IMAGE,
        hypervisors=resolve_hypervisors("tcg"),
        limits=LIMITS,
        networking=True,
    )


def test_a_valid_request_becomes_a_complete_plan() -> None:
    made = plan(size="512MB", vcpus=2, env={"A": "1"}, network={"bandwidth_upload": "1Gbps"})
    record = made.record
    assert (record.memory_bytes, record.vcpus, record.image_digest) == (512 << 20, 2, IMAGE.digest)
    assert made.network is not None and made.network.upload_bps == 125_000_000
    config = guest_config(record)
    assert config.argv == ["/hello"] and config.env == {"PATH": "/bin", "A": "1"}


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"name": "a" * 24}, "shape of an instance id"),
        ({"size": "64MB"}, "size: at least"),
        ({"size": "64GB"}, "more than this host"),
        ({"size": "999TB"}, "more than this host"),
        ({"size": "1" * 40}, "out of range"),
        ({"size": "lots"}, "size: invalid size"),
        ({"overlay_size": "1MB"}, "overlay_size"),
        ({"vcpus": 0}, "vcpus"),
        ({"vcpus": 3}, "vcpus: 3 is out of range"),
        ({"hotplug_size": "1GB"}, "hotplug_size"),
        ({"ttl": "soon"}, "ttl"),
        ({"ttl": "99999999999h"}, "ttl: .* beyond"),
        ({"snapshot_policy": {"compression": {"enabled": True, "level": 99}}}, "level"),
        ({"disk_io_bps": "fast"}, "disk_io_bps"),
        ({"env": {"A=B": "x"}}, "env: invalid"),
        ({"env": {"A": "nul\x00byte"}}, "env: environment variable A"),
        ({"platform": "linux/arm64"}, "platform"),
        ({"hypervisor": "firecracker"}, "hypervisor"),
        ({"network": {"bandwidth_download": "1 parsec"}}, "network.bandwidth_download"),
        ({"network": {"enabled": False, "bandwidth_upload": "1Gbps"}}, "network"),
        ({"volumes": [{"volume_id": "v", "mount_path": "data"}]}, r"volumes\[0\]\.mount_path"),
        ({"volumes": [{"volume_id": "v", "mount_path": "/proc/x"}]}, r"volumes\[0\]\.mount_path"),
        ({"volumes": [{"volume_id": "v", "mount_path": "/d", "overlay": True}]}, "overlay"),
        ({"entrypoint": [], "cmd": []}, "no entrypoint or cmd"),
    ],
)
def test_invalid_fields_are_refused_by_name(fields: dict[str, Any], names: str) -> None:
    with pytest.raises(EmberError, match=names) as refused:
        plan(**fields)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    "fields",
    [{"vcpus": "2"}, {"vcpus": True}, {"skip_guest_agent": "yes"}, {"colour": "red"}],
)
def test_types_are_strict_and_unknown_fields_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CreateInstanceRequest.model_validate({"name": "web", "image": "x", **fields})


def test_networking_off_refuses_only_an_explicit_request() -> None:
    hypervisors = resolve_hypervisors("tcg")

    def offline(**fields: Any) -> Any:
        request = CreateInstanceRequest.model_validate({"name": "w", "image": "x", **fields})
        return plan_create(
            request, instance_id="x" * 24, image=IMAGE, hypervisors=hypervisors,
            limits=LIMITS, networking=False,
        )  # fmt: skip

    assert offline().network is None
    with pytest.raises(InvalidArgument, match="networking is turned off"):
        offline(network={"enabled": True})


def test_vm_spec_is_a_pure_function_of_the_plan(tmp_path: Any) -> None:
    record = plan(size="256MB", vcpus=1, disk_io_bps="10MB/s").record
    layout = Layout(tmp_path / "instances", tmp_path / "run").of(record.id)
    system = BootArtifacts(tmp_path / "vmlinuz", tmp_path / "initrd", "6.1", "abc")
    root = tmp_path / "root.erofs"
    spec = vm_spec(record, layout, system, root, BootDevices(), memory_in_file=False)
    assert spec.memory_bytes == 256 << 20 and spec.vcpus == 1 and spec.nics == []
    assert [d.serial for d in spec.disks] == ["ember-root", "ember-overlay", "ember-config"]
    assert all(d.bps_limit == 10 << 20 for d in spec.disks[:2])
    assert spec.qmp_socket == tmp_path / "run" / record.id / "qmp.sock"
    assert not (tmp_path / "instances").exists()  # nothing was written
    assert MIN_MEMORY_BYTES == 128 << 20 and spec.memory_file is None
    in_file = vm_spec(record, layout, system, root, BootDevices(), memory_in_file=True)
    assert in_file.memory_file == layout.memory


def test_guest_ram_goes_in_a_file_for_instances_that_auto_standby() -> None:
    sleepy = plan(auto_standby={"enabled": True, "idle_timeout": "5m"}).record
    awake = plan().record
    assert keeps_memory_in_file(sleepy, "auto") and not keeps_memory_in_file(awake, "auto")
    assert keeps_memory_in_file(awake, "always") and not keeps_memory_in_file(sleepy, "never")
