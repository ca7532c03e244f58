"""The official `unikraft-cloud` SDK, unchanged, against a real Ember server and real VMs.

One server (with its Caddy) in a namespace this module made; every call below runs in
that namespace (`in_netns`), through `UnikraftCloud(base_url=...)`. Two small VMs, and
a clone of one of them saved as a template."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from unikraft_cloud import REMOVE, NotFoundError, StopReason, UnikraftCloud, UnikraftCloudError
from unikraft_cloud.api.platform import models
from unikraft_cloud.core.response import envelope_entries, raise_for_envelope

from ember.testkit.ember_server import EmberServer
from ember.testkit.image import BuiltImage, build_image, busybox_layer, directory, file
from ember.testkit.netns import in_netns
from tests.conftest import push_to_ember, running_server
from tests.ukc.pem import self_signed

pytestmark = pytest.mark.vm
PORT = 8000
SERVE = ["/bin/sh", "-c", "echo started $WHO; echo $WHO > /www/index.html; "
         "exec httpd -f -p 8080 -h /www"]  # fmt: skip


def guest_image() -> BuiltImage:
    return build_image([busybox_layer(), {"www": directory(), "www/x": file("", 0o644)}])


@pytest.fixture(scope="module")
def server(ns: str) -> Iterator[EmberServer]:
    with running_server(ns, env={"EMBER_STOP_TIMEOUT_SECONDS": "3"}) as server:
        yield server


@pytest.fixture(scope="module")
def image(ns: str, server: EmberServer) -> str:
    return in_netns(ns, push_to_ember, server, guest_image(), "ukc", "web")


def curl(host: str) -> tuple[int, str]:
    proc = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-H", f"Host: {host}", "-w", "\n%{http_code}",
         f"http://127.0.0.1:{PORT}/"], capture_output=True, text=True,
    )  # fmt: skip
    body, _, status = proc.stdout.rpartition("\n")
    return int(status or 0), body.strip()


def until_served(host: str) -> tuple[int, str]:
    answer = (0, "")
    for _ in range(150):
        answer = curl(host)
        if answer[0] == 200:
            break
        time.sleep(0.2)
    return answer


def client(server: EmberServer) -> UnikraftCloud:
    return UnikraftCloud(base_url=server.url, token=server.token())


async def _instances(server: EmberServer, image: str) -> None:
    async with client(server) as ukc:
        web = await ukc.instances.create(
            name="web", image=image, memory_mb=256, vcpus=1, args=SERVE, env={"WHO": "web"},
            tags=["app=web", "batch"], autostart=True, timeout_s=120,
            service_group={"services": [{"port": PORT, "destination_port": 8080}],
                           "domains": [{"name": "web.test"}]},
        )  # fmt: skip
        assert web.state == "running" and web.memory_mb == 256 and web.vcpus == 1
        assert web.service_group is not None and web.service_group.name
        assert sorted(web.tags or []) == ["app=web", "batch"]
        # Reached through the group's published port (Caddy), by its domain.
        assert until_served("web.test") == (200, "web")

        worker = await ukc.instances.create(
            name="worker", image=image, memory_mb=256, vcpus=1, args=SERVE,
            env={"WHO": "worker"}, tags=["app=worker"], autostart=True,
            schedules=[{"name": "nightly", "when": "*-*-* 03:00:00", "action": "stop"}],
        )  # fmt: skip
        [nightly] = worker.schedules or []  # Ember's schedules: normalised, next run known
        assert nightly.name == "nightly" and nightly.action == "stop" and nightly.next_at
        morning = {"name": "morning", "when": "*-*-* 07:00:00", "action": "start"}
        await ukc.instances.get(name="worker").update(schedules=[nightly.model_dump(
            exclude_none=True, exclude={"next_at"}), morning])  # fmt: skip
        changed = await ukc.instances.get(name="worker")
        assert [s.name for s in changed.schedules or []] == ["nightly", "morning"]
        await ukc.instances.get(name="worker").update(schedules=REMOVE)
        assert not (await ukc.instances.get(name="worker")).schedules
        by_name = await ukc.instances.get(name="web")
        by_uuid = await ukc.instances.get(uuid=web.uuid)
        assert by_name.uuid == by_uuid.uuid == web.uuid and by_uuid.name == "web"

        tagged = await ukc.instances.list(tags=["batch"], details=True)
        assert [i.name for i in tagged] == ["web"]
        paged = await ukc.instances.list(page_size=1, details=True)
        assert sorted(str(i.name) for i in paged) == ["web", "worker"]

        waited = await ukc.instances.get(name="web").wait(state="running", timeout_seconds=60)
        assert waited.state == "running"
        logs = await ukc.instances.get(name="web").logs(offset=-4096)
        assert b"started web" in base64.b64decode(logs.output or "")
        metrics = await ukc.instances.get(name="web").metrics()
        assert (metrics.rss_bytes or 0) > 0 and (metrics.cpu_time_ms or 0) > 0
        # The plumbing layer's by-uuid routes answer as the batches do.
        plumbing, uuid = ukc.api.platform.instances, str(web.uuid)
        tail = await plumbing.get_instance_logs_by_uuid(
            uuid=uuid, body=models.GetInstanceLogsByUUIDRequestBody(offset=-64)
        )
        [logged] = envelope_entries(tail, "instances")
        assert b"started web" in base64.b64decode(logged.output or "")
        gone = await plumbing.get_instance_metrics_by_uuid(uuid="b" * 24)
        with pytest.raises(NotFoundError):
            envelope_entries(gone, "instances")

        # One batch, one item missing: the present one is stopped, the missing one named.
        with pytest.raises(NotFoundError) as missing:
            await ukc.instances.stop(["worker", "ghost"])
        assert [e.name for e in missing.value.errors or ()] == ["ghost"]
        assert [r.name for r in missing.value.results] == ["worker"]
        stopped = await ukc.instances.get(name="worker")
        # The seed's bitmask, decoded by the SDK: a user's stop (forced or not: httpd as
        # the guest's program may outlast the stop timeout).
        assert stopped.state == "stopped" and stopped.stop is not None
        assert stopped.stop.reason & StopReason.USER and stopped.describe_stop()
        await ukc.instances.get(name="worker").start()
        again = await ukc.instances.get(name="worker").wait(state="running", timeout_seconds=120)
        assert again.state == "running"
        # A wait that lapses is the SDK's WaitTimeoutError (a TimeoutError), with the state.
        with pytest.raises(TimeoutError) as lapsed:
            await ukc.instances.get(name="worker").wait(state="stopped", timeout_seconds=1)
        assert getattr(lapsed.value, "state", None) == "running"
        # Suspend is Ember's standby; starting a standby instance restores it.
        await ukc.instances.get(name="worker").suspend()
        assert (await ukc.instances.get(name="worker")).state == "standby"
        await ukc.instances.get(name="worker").start()
        assert (await ukc.instances.get(name="worker")).state == "running"

        # One instance, two APIs: Ember's own answers for the same id.
        headers = {"Authorization": f"Bearer {server.token()}"}
        own = httpx.get(f"{server.url}/instances/worker", headers=headers).json()
        assert own["id"] == worker.uuid and own["state"] == "Running"

        await _volumes(ukc)
        await _services_and_quotas(ukc, image)
        await _templates(ukc, str(web.service_group.uuid))

        await ukc.instances.get(name="ghost").delete(missing_ok=True)
        await ukc.instances.delete(["web", "worker-2"])
        assert await ukc.instances.list() == []


async def _templates(ukc: UnikraftCloud, group: str) -> None:
    """ "worker" saved as a template (it is gone), one clone of it into web's group,
    served there through Caddy; the template deleted under its running clone (which has
    its own copy: worker did not boot with shared memory). One VM more, the clone."""
    plumbing = ukc.api.platform.instances
    saved = await plumbing.create_template_instances(
        body=[models.CreateTemplateInstancesRequestItem(name="worker")]
    )
    [item] = envelope_entries(saved, "instances")
    assert item.name == "worker" and item.state == "template"
    assert [i.name for i in await ukc.instances.list()] == ["web"]
    template = await ukc.templates.get(name="worker")
    assert template.uuid == item.uuid and template.state == "template"
    assert template.memory_mb == 256 and "app=worker" in (template.tags or [])
    assert [t.name for t in await ukc.templates.list(details=True)] == ["worker"]
    clone = await ukc.templates.get(name="worker").clone(
        name="worker-2", autostart=True, timeout_s=120, service_group={"uuid": group}
    )
    assert clone.state == "running" and clone.name == "worker-2"
    assert clone.service_group is not None and clone.service_group.uuid == group
    answers = set()
    for _ in range(150):  # web and the clone share the group: the clone answers too
        answers.add(curl("web.test"))
        if (200, "worker") in answers:
            break
        time.sleep(0.2)
    assert (200, "worker") in answers
    await ukc.templates.get(name="worker").delete()
    assert await ukc.templates.list() == []
    assert (await ukc.instances.get(name="worker-2")).state == "running"


async def _volumes(ukc: UnikraftCloud) -> None:
    data = await ukc.volumes.create(name="data", size_mb=1024, tags=["kind=db"])
    assert data.size_mb == 1024 and data.state == "available"
    await ukc.volumes.get(name="data").attach(to="worker", at="/data")
    attached = await ukc.volumes.get(uuid=data.uuid)
    assert [i.name for i in attached.attached_to or []] == ["worker"]
    await ukc.volumes.get(name="data").detach()
    assert not (await ukc.volumes.get(name="data")).attached_to
    await ukc.volumes.get(name="data").delete()
    assert await ukc.volumes.list() == []


async def _services_and_quotas(ukc: UnikraftCloud, image: str) -> None:
    api = await ukc.services.create(
        name="api", domains=[{"name": "api.test"}], hard_limit=20,
        services=[{"port": 8443, "destination_port": 8080, "handlers": ["tls", "http"]}],
    )  # fmt: skip
    assert api.hard_limit == 20
    await ukc.services.get(name="api").update(hard_limit=10, soft_limit=5)
    updated = await ukc.services.get(uuid=api.uuid)
    assert (updated.soft_limit, updated.hard_limit) == (5, 10)
    await _autoscale(ukc, str(api.uuid), image)
    await _certificates(ukc)
    await ukc.services.get(name="api").delete()

    assert [str(i.url).split("@")[0] for i in await ukc.images.list()] == [image]
    quotas = await ukc.users.quotas()
    assert len(quotas) == 1
    used, hard = quotas[0].used, quotas[0].hard
    assert used is not None and hard is not None
    assert used.live_instances == 2 and (used.live_memory_mb or 0) >= 512
    assert (hard.live_vcpus or 0) >= 1 and (hard.live_memory_mb or 0) > 0


async def _autoscale(ukc: UnikraftCloud, group: str, image: str) -> None:
    """A configuration that cannot act (no members, min 0, its policy disabled): no VM
    is made; the shapes and the group's `autoscale` flag are what is checked."""
    api = ukc.api.platform.autoscale
    step = {"adjustment": 1, "lower_bound": 80}
    body = models.CreateAutoscaleConfigurationByServiceGroupUUIDRequest.model_validate({
        "uuid": group, "min_size": 0, "max_size": 1,
        "policies": [{"name": "cpu", "enabled": False, "metric": "cpu", "steps": [step]}],
        "create_args": {"image": image, "memory_mb": 256, "args": SERVE},
    })  # fmt: skip
    made = await api.create_autoscale_configuration_by_service_group_uuid(group, body=body)
    raise_for_envelope(made)
    listed = await api.get_autoscale_configurations(uuid=[group])
    [config] = envelope_entries(listed, "service_groups")
    assert config.enabled and config.max_size == 1
    assert [p.name for p in config.policies or []] == ["cpu"]
    assert (await ukc.services.get(uuid=group)).autoscale is True
    raise_for_envelope(await api.delete_autoscale_configurations_by_service_group_uuid(group))
    assert (await ukc.services.get(uuid=group)).autoscale is False


async def _certificates(ukc: UnikraftCloud) -> None:
    """An uploaded chain is what Caddy serves for its domain (the group "api" has a TLS
    service on 8443 for api.test); a renewal replaces it; a bad key is refused."""
    chain, key = self_signed("api.test")
    cert = await ukc.certificates.create(name="api-cert", chain=chain, pkey=key)
    assert cert.state == "valid" and cert.common_name == "api.test"
    assert [g.name for g in cert.service_groups or []] == ["api"]
    assert served("api.test", 8443) == pem_der(chain)
    renewed, renewed_key = self_signed("api.test")
    await ukc.certificates.get(name="api-cert").update(chain=renewed, pkey=renewed_key)
    assert served("api.test", 8443) == pem_der(renewed)
    with pytest.raises(UnikraftCloudError, match="does not match"):
        await ukc.certificates.create(name="bad", chain=chain, pkey=renewed_key)
    await ukc.certificates.get(uuid=cert.uuid).delete()
    assert await ukc.certificates.list() == []


def served(host: str, port: int) -> bytes:
    """The certificate (DER) a TLS client asking for `host` (SNI) is given."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for _ in range(50):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname=host) as tls:  # fmt: skip
                der = tls.getpeercert(binary_form=True)
                if der:
                    return der
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"no TLS answer for {host} on port {port}")


def pem_der(chain: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(chain)


def test_the_official_sdk_drives_instances_groups_volumes_and_quotas(
    ns: str, server: EmberServer, image: str
) -> None:
    in_netns(ns, _run, server, image)


def _run(server: EmberServer, image: str) -> None:
    asyncio.run(_instances(server, image))
