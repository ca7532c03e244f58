"""`QemuHypervisor.save`/`restore` on a bare VM, both ways guest RAM can be kept: in a
shared memory file (x-ignore-shared: only device state is written) or streamed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ember.guest.client import AgentClient
from ember.guest.config import GuestConfig, create_overlay_disk, write_config_disk
from ember.hypervisor import DiskSpec, VMSpec, resolve_hypervisors
from ember.hypervisor.qemu import QemuHypervisor, build_command
from ember.system import load
from ember.testkit.ember_server import SYSTEM_DIR

pytestmark = pytest.mark.vm
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; mv /tmp/n /tmp/count; sleep 0.05; done"


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("rootfs")
    root = base / "root"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "tmp").mkdir()
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "cat", "sleep", "mv", "echo"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    image = base / "rootfs.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(root)], check=True)
    return image


def spec_for(work: Path, rootfs: Path, in_file: bool) -> VMSpec:
    system = load(SYSTEM_DIR)
    create_overlay_disk(work / "overlay.ext4", 256 << 20)
    write_config_disk(work / "config.disk", GuestConfig(cmd=["/bin/sh", "-c", COUNTER]))
    return VMSpec(
        instance_dir=work, kernel=system.kernel, initrd=system.initrd, cmdline=system.cmdline,
        vcpus=1, memory_bytes=256 << 20, app_log=work / "app.log",
        agent_socket=work / "agent.sock", qmp_socket=work / "qmp.sock",
        pid_file=work / "qemu.pid", vmm_log=work / "vmm.log",
        disks=[DiskSpec(rootfs, "ember-root", readonly=True),
               DiskSpec(work / "overlay.ext4", "ember-overlay"),
               DiskSpec(work / "config.disk", "ember-config")],
        memory_file=work / "memory.ram" if in_file else None,
    )  # fmt: skip


async def read_count(spec: VMSpec) -> int:
    async with await AgentClient.connect(spec.agent_socket, timeout=30) as agent:
        await agent.wait_ready(120)
        _, out, _ = await (await agent.exec(["sh", "-c", "cat /tmp/count || echo 0"])).wait()
    return int(out.strip() or 0)


def test_memory_backend_only_with_a_memory_file(tmp_path: Path, rootfs: Path) -> None:
    with_file = build_command(spec_for(tmp_path, rootfs, True), "tcg", incoming=True)
    assert any(a.startswith("memory-backend-file,id=ram0,") and "share=on" in a for a in with_file)
    assert any("memory-backend=ram0" in a for a in with_file)
    assert with_file[-2:] == ["-incoming", "defer"]
    plain = build_command(spec_for(tmp_path, rootfs, False), "tcg")
    assert not any("memory-backend" in a for a in plain) and "-incoming" not in plain


@pytest.mark.parametrize("in_file", [True, False], ids=["memory-file", "streamed"])
async def test_save_and_restore(tmp_path: Path, rootfs: Path, in_file: bool) -> None:
    hv = resolve_hypervisors().get("qemu")
    assert isinstance(hv, QemuHypervisor) and hv.capabilities.snapshot
    spec = spec_for(tmp_path, rootfs, in_file)
    handle = await hv.start(spec)
    try:
        while (before := await read_count(spec)) < 3:
            pass
        saved = await hv.save(handle, tmp_path / "vmstate", memory_file=in_file)
        # With the RAM in its file, the stream is device state only.
        assert (saved.bytes < 1 << 20) if in_file else (saved.bytes > 10 << 20)
        await hv.quit(handle)
        assert not hv.is_alive(handle)
        handle = await hv.restore(spec, tmp_path / "vmstate")
        assert await read_count(spec) >= before  # went on from where it was
    finally:
        hv.kill(handle)
        await hv.wait_exit(handle, timeout=10)


async def test_failed_save_leaves_no_state_and_the_vm_can_resume(
    tmp_path: Path, rootfs: Path
) -> None:
    hv = resolve_hypervisors().get("qemu")
    spec = spec_for(tmp_path, rootfs, True)
    handle = await hv.start(spec)
    try:
        await read_count(spec)
        with pytest.raises(Exception, match="save failed"):
            await hv.save(handle, tmp_path / "no" / "such" / "dir" / "vmstate", memory_file=True)
        assert not (tmp_path / "no").exists()
        await hv.resume(handle)
        first = await read_count(spec)
        while await read_count(spec) <= first:
            pass
    finally:
        hv.kill(handle)
        await hv.wait_exit(handle, timeout=10)
