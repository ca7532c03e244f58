"""Fast checks of the system preparation's pure parts (no kernel build, no VM)."""

from __future__ import annotations

from ember.system.kernel import load_order


def test_module_load_order_puts_dependencies_first() -> None:
    dep = "k/virtio_blk.ko: k/virtio_ring.ko k/virtio.ko\nk/virtio_ring.ko:\nk/virtio.ko:\n"
    order = load_order(dep, ("virtio_blk", "ext4"), builtin={"ext4"})
    assert order == ["k/virtio_ring.ko", "k/virtio.ko", "k/virtio_blk.ko"]
