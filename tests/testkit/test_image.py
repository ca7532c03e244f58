"""The test-image kit, checked against independent tools: umoci, skopeo, and a real socket."""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import httpx

from ember.images.unpack import unpack_layers
from ember.testkit import build_index, hello_image, multilayer_image, padded_image
from ember.testkit.image import hello_binary, write_oci_layout
from ember.testkit.registry_server import free_port


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under `root`: type, mode, owner, and content or link target."""
    entries: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                detail: object = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                detail = path.read_bytes()
            else:
                detail = None
            key = str(path.relative_to(root))
            entries[key] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid,
                            info.st_gid, detail)  # fmt: skip
    return entries


def test_our_unpack_matches_umoci(tmp_path: Path) -> None:
    image = multilayer_image()
    write_oci_layout(image, tmp_path / "layout")
    subprocess.run(
        ["umoci", "unpack", "--image", f"{tmp_path / 'layout'}:latest", str(tmp_path / "bundle")],
        check=True, capture_output=True,
    )  # fmt: skip
    layers = []
    for i, layer in enumerate(json.loads(image.manifest)["layers"]):
        path = tmp_path / f"layer{i}"
        path.write_bytes(image.blobs[layer["digest"]])
        layers.append(path)
    unpack_layers(layers, tmp_path / "ours")
    theirs = tree(tmp_path / "bundle" / "rootfs")
    ours = tree(tmp_path / "ours")
    assert ours == theirs
    assert ours["app/config"][2:] == (1000, 1000, b"v2") and "app/old" not in ours


def test_skopeo_reads_layouts(tmp_path: Path) -> None:
    image = hello_image(env={"K": "v"})
    write_oci_layout(image, tmp_path / "single")
    inspected = json.loads(
        subprocess.run(["skopeo", "inspect", f"oci:{tmp_path / 'single'}:latest"],
                       check=True, capture_output=True, text=True).stdout
    )  # fmt: skip
    assert inspected["Digest"] == image.digest and "K=v" in inspected["Env"]
    index = build_index({"amd64": image, "arm64": hello_image(architecture="arm64")})
    write_oci_layout(index, tmp_path / "index")
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{tmp_path / 'index'}:latest"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    platforms = [m["platform"]["architecture"] for m in json.loads(raw)["manifests"]]
    assert platforms == ["amd64", "arm64"]


def test_images_are_deterministic_and_padding_is_incompressible() -> None:
    assert multilayer_image().digest == multilayer_image().digest
    padded = padded_image(8 * 1024 * 1024, layers=4)
    layers = json.loads(padded.manifest)["layers"]
    assert len(layers) == 6  # busybox, hello, then four of padding
    padding = [padded.blobs[layer["digest"]] for layer in layers[2:]]
    assert sum(map(len, padding)) >= 8 * 1024 * 1024  # gzip could not shrink it
    assert all(len(gzip.decompress(blob)) > 2 * 1024 * 1024 for blob in padding)


def test_hello_prints_exits_and_serves(tmp_path: Path) -> None:
    binary = tmp_path / "hello"
    binary.write_bytes(hello_binary())
    binary.chmod(0o755)
    out = subprocess.run([str(binary), "exit", "3"], capture_output=True, text=True,
                         env={"GREETING": "hi"})  # fmt: skip
    assert out.returncode == 3 and out.stdout == "hello from ember: greeting=hi args=exit,3\n"
    port = free_port()
    server = subprocess.Popen([str(binary), "serve"], env={"PORT": str(port)},
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert response.status_code == 200 and response.text == "hello from ember\n"
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=10)
    assert server.returncode == 0
    assert f"serving on port {port}" in output and "stopping gracefully" in output
