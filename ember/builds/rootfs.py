"""The builder VM's root image: Debian with buildah, made by debootstrap once and cached.

`builder_layer(cache_dir)` returns the root filesystem as one uncompressed tar layer
(and its digest), building it on first use: `debootstrap --variant=minbase` with
buildah, then the files below. The cache key hashes everything that shapes the
result (suite, packages, config files, this module's recipe version), so a change
yields a new directory and an old one is never reused by mistake.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ember.errors import Unavailable

__all__ = ["BuilderLayer", "builder_key", "builder_layer"]

RECIPE = 1  # bump when the steps below change in a way the key does not see
SUITE = "bookworm"
PACKAGES = (
    "buildah",
    "netavark",
    "crun",
    "ca-certificates",
)  # netavark: containers-common needs a network stack
# Storage on the builder's cache disk (mounted at /var/lib/containers); the kernel's
# overlay driver, which the guest initrd loads.
FILES: dict[str, str] = {
    "etc/containers/storage.conf": (
        '[storage]\ndriver = "overlay"\n'
        'runroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n'
    ),
    # Builds run as root inside a VM of their own: chroot isolation needs no OCI runtime.
    "etc/containers/containers.conf": '[engine]\ncgroup_manager = "cgroupfs"\n',
}
# Left out of the layer: mount points the guest fills, and apt's download cache.
EXCLUDE = ("./dev/*", "./proc/*", "./sys/*", "./run/*", "./var/cache/apt/archives/*.deb",
           "./var/lib/apt/lists/*")  # fmt: skip


@dataclass(frozen=True)
class BuilderLayer:
    tar: Path
    digest: str  # sha256:... of the uncompressed tar (also its diff id)
    size: int
    key: str


def builder_key(mirror: str) -> str:
    recipe = {"recipe": RECIPE, "suite": SUITE, "packages": PACKAGES, "files": FILES,
              "exclude": EXCLUDE, "mirror": mirror}  # fmt: skip
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


_lock = asyncio.Lock()


async def builder_layer(cache_dir: Path, mirror: str) -> BuilderLayer:
    """The cached layer, built first if missing (one build at a time in this process)."""
    async with _lock:
        return await asyncio.to_thread(_ensure, cache_dir, mirror)


def _ensure(cache_dir: Path, mirror: str) -> BuilderLayer:
    key = builder_key(mirror)
    done = cache_dir / key
    if not (done / "digest").exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".make-") as tmp:
            work = Path(tmp)
            _debootstrap(work / "rootfs", mirror)
            _pack(work / "rootfs", work / "layer")
            shutil.rmtree(work / "rootfs")
            shutil.rmtree(done, ignore_errors=True)
            (work / "layer").rename(done)  # whole or not at all
    digest = (done / "digest").read_text().strip()
    tar = done / "rootfs.tar"
    return BuilderLayer(tar=tar, digest=digest, size=tar.stat().st_size, key=key)


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise Unavailable(f"cannot make the builder image: {what} failed: {' / '.join(tail)}")


def _debootstrap(root: Path, mirror: str) -> None:
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
          str(root), mirror], "debootstrap")  # fmt: skip
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _pack(root: Path, out: Path) -> None:
    out.mkdir()
    tar = out / "rootfs.tar"
    excludes = [f"--exclude={pattern}" for pattern in EXCLUDE]
    _run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), *excludes, "-cf", str(tar),
          "."], "tar")  # fmt: skip
    sha = hashlib.sha256()
    with tar.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    (out / "digest").write_text(f"sha256:{sha.hexdigest()}\n")
