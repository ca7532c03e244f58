"""Fast checks of the system preparation's pure parts (no kernel build, no VM)."""

from __future__ import annotations

import threading
from pathlib import Path

from ember.system.kernel import load_order, switch_build


def test_module_load_order_puts_dependencies_first() -> None:
    dep = "k/virtio_blk.ko: k/virtio_ring.ko k/virtio.ko\nk/virtio_ring.ko:\nk/virtio.ko:\n"
    order = load_order(dep, ("virtio_blk", "ext4"), builtin={"ext4"})
    assert order == ["k/virtio_ring.ko", "k/virtio.ko", "k/virtio_blk.ko"]


def test_a_kernel_rebuild_swaps_in_atomically(tmp_path: Path) -> None:
    """A boot reading `kernel/<version>/vmlinuz` while builds are swapped in always finds
    a whole build; old builds go, but not the one a boot may have resolved just now."""

    def build(n: int) -> Path:
        path = tmp_path / f"6.1.0-cloud.{n}"
        path.mkdir()
        (path / "vmlinuz").write_text(f"build {n}")
        return path

    link = tmp_path / "6.1.0-cloud"
    link.mkdir()  # the layout before versioned builds: a real directory, moved aside once
    (link / "vmlinuz").write_text("unversioned")
    switch_build(link, build(1))
    assert link.is_symlink() and (link / "vmlinuz").read_text() == "build 1"
    missing: list[str] = []
    done = threading.Event()

    def boot() -> None:
        while not done.is_set():
            try:
                (link / "vmlinuz").read_text()
            except OSError as exc:
                missing.append(repr(exc))

    reader = threading.Thread(target=boot)
    reader.start()
    try:
        for n in range(2, 200):
            switch_build(link, build(n))
    finally:
        done.set()
        reader.join()
    assert missing == []
    assert (link / "vmlinuz").read_text() == "build 199"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "6.1.0-cloud", "6.1.0-cloud.198", "6.1.0-cloud.199",
    ]  # fmt: skip
