"""Guest-side mounting, booting real microVMs with volume disks straight through QEMU.

The instance core wires attachments into create/start; these tests drive the same
pieces it uses (`VolumeManager.plan_disks`, `guest_mounts`, `prepare_overlay_disks`)
with the hypervisor directly.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from ember.guest.config import GuestConfig, GuestVolume, read_exit_record, write_config_disk
from ember.hypervisor import DiskSpec, VMSpec
from ember.hypervisor.accel import detect_accel
from ember.hypervisor.qemu import QemuHypervisor
from ember.store import Store
from ember.system import BootArtifacts, prepare
from ember.testkit.ember_server import SYSTEM_DIR
from ember.volumes import VolumeManager
from tests.volumes.archives import Entry, body, make_archive

pytestmark = pytest.mark.vm
BOOT_TIMEOUT = 120  # TCG on a loaded 2-core machine
APPLETS = ("sh", "echo", "cat", "stat", "readlink", "sync", "ls", "grep", "mount", "touch")
Boot = Callable[[str, list[DiskSpec], list[GuestVolume], str], Awaitable[tuple[int, str, str]]]


@pytest.fixture(scope="module")
def artifacts() -> BootArtifacts:
    return prepare(SYSTEM_DIR)  # rebuilds the initrd if init changed


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("rootfs")
    root = base / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    image = base / "rootfs.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(root)], check=True)
    return image


@pytest.fixture
def volumes(tmp_path: Path) -> Iterator[VolumeManager]:
    store = Store(tmp_path / "ember.db")
    yield VolumeManager(store, tmp_path / "data")
    store.close()


@pytest.fixture
async def boot(artifacts: BootArtifacts, rootfs: Path, tmp_path: Path) -> AsyncIterator[Boot]:
    """``await boot(name, disks, mounts, script)``: runs the script, returns its exit and log."""
    hv = QemuHypervisor(detect_accel("auto"))
    handles = []

    async def run(
        name: str, disks: list[DiskSpec], mounts: list[GuestVolume], script: str
    ) -> tuple[int, str, str]:
        work = tmp_path / name
        work.mkdir(exist_ok=True)
        config = work / "config.img"
        write_config_disk(config, GuestConfig(cmd=["/bin/sh", "-c", script], volumes=mounts))
        spec = VMSpec(
            instance_dir=work, kernel=artifacts.kernel, initrd=artifacts.initrd,
            cmdline=artifacts.cmdline, vcpus=1, memory_bytes=256 << 20,
            app_log=work / "app.log", agent_socket=work / "agent.sock",
            qmp_socket=work / "qmp.sock", pid_file=work / "qemu.pid", name=name,
            disks=[DiskSpec(rootfs, "ember-root", readonly=True),
                   DiskSpec(config, "ember-config"), *disks],
        )  # fmt: skip
        handle = await hv.start(spec)
        handles.append(handle)
        assert await hv.wait_exit(handle, timeout=BOOT_TIMEOUT), "the VM did not power off"
        record = read_exit_record(config)
        assert record is not None, (work / "app.log").read_text(errors="replace")
        return record.exit_code, record.message, (work / "app.log").read_text(errors="replace")

    yield run
    for handle in handles:
        hv.kill(handle)


def debugfs(disk: Path, request: str, *, check: bool = True) -> str:
    proc = subprocess.run(
        ["debugfs", "-R", request, str(disk)], capture_output=True, text=True, check=check
    )
    return proc.stdout + ("" if check else proc.stderr)


WRITER = """
echo "archive=$(cat /site/docs/readme.txt)"
echo "mode=$(stat -c %a /site/bin/run.sh) link=$(readlink /site/latest)"
echo "nested=$(cat /site/a/b/c/deep.txt)"
echo written >/data/new.txt && echo rw-ok
touch /site/x 2>/dev/null && echo ro-WRITABLE || echo ro-refused
echo mine >/ov/added && echo "ov=$(cat /ov/base.txt)+$(cat /ov/added)"
grep -q ' /site ext4 ro' /proc/mounts && echo site-mounted-ro
sync
"""

READER = """
echo "data=$(cat /data/new.txt)"
touch /data/y 2>/dev/null && echo ro-WRITABLE || echo ro-refused
ls /ov/added 2>/dev/null && echo ov-LEAKED || echo ov-private
echo "ov=$(cat /ov/base.txt)"
"""


async def test_volumes_in_the_guest(volumes: VolumeManager, boot: Boot, tmp_path: Path) -> None:
    site = make_archive([
        Entry("docs/readme.txt", data=b"from the archive"),
        Entry("bin", tarfile.DIRTYPE, mode=0o755),
        Entry("bin/run.sh", data=b"#!/bin/sh\n", mode=0o751),
        Entry("latest", tarfile.SYMTYPE, linkname="docs/readme.txt"),
        Entry("a/b/c/deep.txt", data=b"deep"),
    ])  # fmt: skip
    await volumes.from_archive(body(site), name="site", size_gb=1)
    await volumes.from_archive(body(make_archive([Entry("base.txt", data=b"base")])),
                               name="base", size_gb=1)  # fmt: skip
    data = await volumes.create("data", 1)

    volumes.attach("site", "vm-a", "a", "/site", readonly=True)
    volumes.attach("data", "vm-a", "a", "/data")
    volumes.attach("base", "vm-a", "a", "/ov", readonly=True, overlay=True, overlay_size="128MB")
    a_dir = tmp_path / "a"
    a_dir.mkdir()
    attached = volumes.attachments_of("vm-a")
    volumes.prepare_overlay_disks(attached, a_dir)
    code, message, log = await boot(
        "a", volumes.plan_disks(attached, a_dir), volumes.guest_mounts(attached), WRITER
    )
    assert (code, message) == (0, "exited with code 0"), log
    for line in ("archive=from the archive", "mode=751 link=docs/readme.txt", "nested=deep",
                 "rw-ok", "ro-refused", "ov=base+mine", "site-mounted-ro"):  # fmt: skip
        assert line in log, log
    assert debugfs(volumes.disk_path(data.id), "cat /new.txt") == "written\n"
    base = volumes.get("base")
    assert "File not found" in debugfs(volumes.disk_path(base.id), "stat /added", check=False)

    # The next instance: the data written by the first, read-only now; its own overlay.
    volumes.release_instance("vm-a")
    volumes.attach("data", "vm-b", "b", "/data", readonly=True)
    volumes.attach("base", "vm-b", "b", "/ov", readonly=True, overlay=True, overlay_size="128MB")
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    attached = volumes.attachments_of("vm-b")
    volumes.prepare_overlay_disks(attached, b_dir)
    code, message, log = await boot(
        "b", volumes.plan_disks(attached, b_dir), volumes.guest_mounts(attached), READER
    )
    assert code == 0, log
    for line in ("data=written", "ro-refused", "ov-private", "ov=base"):
        assert line in log, log


async def test_a_volume_that_cannot_mount_fails_the_boot(boot: Boot, tmp_path: Path) -> None:
    junk = tmp_path / "junk.raw"
    junk.write_bytes(bytes(8 << 20))  # not a filesystem
    code, message, log = await boot(
        "bad",
        [DiskSpec(junk, "ember-vol-0")],
        [GuestVolume(serial="ember-vol-0", mount_path="/data")],
        "echo WORKLOAD-RAN",
    )
    assert code == 125, log
    assert message.startswith("ember-init: volume at /data: cannot mount ember-vol-0"), message
    assert "WORKLOAD-RAN" not in log

    code, message, _ = await boot(
        "missing", [], [GuestVolume(serial="ember-vol-3", mount_path="/data")], "true"
    )
    assert (code, message) == (125, "ember-init: volume at /data: no disk with serial ember-vol-3")
