"""Pull + convert of a >=100 MB multi-layer image: Ember beside skopeo + umoci + mkfs.erofs.

Both sides read the same image from the same local registry (Debian's
docker-registry on loopback) and end with an erofs root disk, in the same run.
Ember's figure is from `POST /images` until the image reads `ready`. The
second pull of the same digest is timed as a `POST /images` answering ready.

    .venv/bin/python -m bench.images [--size-mb 120] [--runs 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx

from ember.testkit import padded_image, push
from ember.testkit.ember_server import EmberServer
from ember.testkit.registry_server import RegistryServer, start_registry


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def baseline(registry: RegistryServer, reference: str, work: Path) -> None:
    """skopeo copy -> umoci unpack -> mkfs.erofs, as a person would do it by hand."""
    layout, bundle = work / "layout", work / "bundle"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
         f"docker://{registry.host}/{reference}", f"oci:{layout}:latest"],
        check=True,
    )  # fmt: skip
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(
        ["mkfs.erofs", "--quiet", "-zlz4", str(work / "rootfs.erofs"), str(bundle / "rootfs")],
        check=True,
    )


def ember_pull(server: EmberServer, name: str) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {server.token()}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=600) as http:
        http.post("/images", json={"name": name}).raise_for_status()
        while True:
            image: dict[str, object] = http.get(f"/images/{name.replace('/', '%2F')}").json()
            if image["status"] in ("ready", "failed"):
                if image["status"] == "failed":
                    raise RuntimeError(f"pull failed: {image['error']}")
                return image
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=120)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    registry = start_registry(root / "registry")
    try:
        image = padded_image(args.size_mb * 1024 * 1024, layers=4)
        push(image, registry.url, "bench/big", "v1")
        name = f"{registry.host}/bench/big:v1"
        print(f"image: {image.size / 2**20:.1f} MiB in {len(image.blobs) - 1} layers")

        baseline_times, ember_times, again_times = [], [], []
        for run in range(args.runs):
            work = root / f"baseline-{run}"
            work.mkdir()
            baseline_times.append(timed(partial(baseline, registry, "bench/big:v1", work)))
            shutil.rmtree(work)
            server = EmberServer(root / f"ember-{run}" / "data").start()
            try:
                ember_times.append(timed(partial(ember_pull, server, name)))
                again_times.append(timed(partial(ember_pull, server, name)))
            finally:
                server.stop()
                shutil.rmtree(root / f"ember-{run}")

        base, ours = statistics.median(baseline_times), statistics.median(ember_times)
        print(f"skopeo+umoci+mkfs.erofs: {base:.2f}s  (runs: {_fmt(baseline_times)})")
        print(f"ember pull+convert:      {ours:.2f}s  (runs: {_fmt(ember_times)})")
        print(f"ratio ember/baseline:    {ours / base:.2f}x  (target <= 1.0x)")
        print(f"second pull, same digest: {statistics.median(again_times) * 1000:.1f} ms "
              f"(target < 50 ms)")  # fmt: skip
    finally:
        registry.stop()
        shutil.rmtree(root, ignore_errors=True)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
