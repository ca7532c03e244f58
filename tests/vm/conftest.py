"""Fixtures that boot real microVMs: shared boot artifacts, a busybox root image."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ember.guest.config import GuestConfig, create_overlay_disk, write_config_disk
from ember.hypervisor import DiskSpec, VMHandle, VMSpec, resolve_hypervisors
from ember.hypervisor.qemu import QemuHypervisor
from ember.system import BootArtifacts, prepare
from ember.testkit.ember_server import SYSTEM_DIR


@pytest.fixture(scope="session")
def artifacts() -> BootArtifacts:
    return prepare(SYSTEM_DIR)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny image: static busybox with applet links, passwd and group."""
    base = tmp_path_factory.mktemp("rootfs")
    root = base / "root"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "echo", "sleep", "cat", "id", "pwd", "env", "ls", "stty", "tty"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    image = base / "rootfs.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(root)], check=True)
    return image


@dataclass
class BootedVM:
    hv: QemuHypervisor
    handle: VMHandle
    spec: VMSpec
    config_disk: Path

    def app_log(self) -> str:
        return self.spec.app_log.read_text(errors="replace")


@pytest.fixture
async def boot(artifacts: BootArtifacts, rootfs: Path, tmp_path: Path) -> AsyncIterator[object]:
    """``await boot(config)`` starts a VM; every VM is killed at teardown."""
    booted: list[BootedVM] = []
    hv = resolve_hypervisors().get("qemu")
    assert isinstance(hv, QemuHypervisor)

    async def start(config: GuestConfig) -> BootedVM:
        overlay = tmp_path / "overlay.ext4"
        create_overlay_disk(overlay, 256 << 20)
        config_disk = tmp_path / "config.img"
        write_config_disk(config_disk, config)
        spec = VMSpec(
            instance_dir=tmp_path,
            kernel=artifacts.kernel,
            initrd=artifacts.initrd,
            cmdline=artifacts.cmdline,
            vcpus=1,
            memory_bytes=256 << 20,
            app_log=tmp_path / "app.log",
            agent_socket=tmp_path / "agent.sock",
            qmp_socket=tmp_path / "qmp.sock",
            pid_file=tmp_path / "qemu.pid",
            disks=[
                DiskSpec(rootfs, "ember-root", readonly=True),
                DiskSpec(overlay, "ember-overlay", bps_limit=200 << 20),
                DiskSpec(config_disk, "ember-config"),
            ],
        )
        vm = BootedVM(hv, await hv.start(spec), spec, config_disk)
        booted.append(vm)
        return vm

    yield start
    for vm in booted:
        hv.kill(vm.handle)
