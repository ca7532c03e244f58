"""An image converted without erofs-utils (the ext4 fallback) boots like any other."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ember.guest.client import AgentClient
from ember.guest.config import GuestConfig
from ember.images.rootfs import build_rootfs
from ember.images.unpack import unpack_layers
from ember.testkit.image import busybox_layer, layer_tar
from tests.vm.test_boot import BOOT_TIMEOUT, Boot

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ext4root")
    layer = base / "layer.tar.gz"
    layer.write_bytes(layer_tar(busybox_layer()))
    unpack_layers([layer], base / "tree")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shutil, "which", lambda _name: None)  # as if erofs-utils were missing
        assert build_rootfs(base / "tree", base / "rootfs.img") == "ext4"
    return base / "rootfs.img"


async def test_ext4_root_boots(boot: Boot) -> None:
    vm = await boot(GuestConfig(cmd=["/bin/sh", "-c", "echo ext4-root-ok; exit 4"]))
    async with await AgentClient.connect(vm.handle.agent_socket) as agent:
        await agent.wait_ready(BOOT_TIMEOUT)
        exited = await agent.wait_exit(30)
    assert exited.exit_code == 4
    assert "ext4-root-ok" in vm.app_log()
