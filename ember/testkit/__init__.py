"""Build small OCI images locally and push them: for tests, the demo and benchmarks."""

from ember.testkit.image import (
    BuiltImage,
    build_image,
    build_index,
    busybox_layer,
    debian_systemd_image,
    hello_image,
    multilayer_image,
    padded_image,
    write_oci_layout,
)
from ember.testkit.push import push

__all__ = [
    "BuiltImage",
    "build_image",
    "build_index",
    "busybox_layer",
    "debian_systemd_image",
    "hello_image",
    "multilayer_image",
    "padded_image",
    "push",
    "write_oci_layout",
]
