"""Debian roots Ember makes with debootstrap, once, and caches: the builder VM's (with
buildah) and the bases of the Dockerfiles it writes itself (Python, static sites).

`debian_layer(cache_dir, mirror, recipe)` returns the root filesystem as one uncompressed
tar layer (and its digest), building it on first use: `debootstrap --variant=minbase`
with the recipe's packages, then its files. The cache key hashes everything that shapes
the result (suite, packages, files, mirror, this module's recipe version), so a change
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

__all__ = [
    "BUILDER", "PYTHON", "RECIPES", "STATIC", "BuilderLayer", "Recipe", "debian_layer", "prepare",
    "recipe_key",
]  # fmt: skip

RECIPE = 2  # bump when the steps below change in a way the key does not see
SUITE = "bookworm"
# Left out of every layer: mount points the guest fills, and apt's download cache.
EXCLUDE = ("./dev/*", "./proc/*", "./sys/*", "./run/*", "./var/cache/apt/archives/*.deb",
           "./var/lib/apt/lists/*")  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """A Debian root made by debootstrap: its packages, extra files and default command."""

    name: str  # the image's repository in Ember: ember/<name>
    packages: tuple[str, ...]
    files: tuple[tuple[str, str], ...] = ()
    cmd: tuple[str, ...] = ("sleep", "infinity")


BUILDER = Recipe(
    "builder",
    # netavark: containers-common depends on a network stack (unused: chroot isolation).
    ("buildah", "netavark", "crun", "ca-certificates"),
    (
        # Storage on the builder's cache disk (mounted at /var/lib/containers), with the
        # kernel's overlay driver, which the guest initrd loads.
        ("etc/containers/storage.conf", '[storage]\ndriver = "overlay"\n'
         'runroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n'),
        # Builds run as root inside a VM of their own: chroot isolation, no cgroups daemon.
        ("etc/containers/containers.conf", '[engine]\ncgroup_manager = "cgroupfs"\n'),
    ),
)  # fmt: skip
# Bases of the Dockerfiles Ember writes for source without one (`detect.py`).
PYTHON = Recipe("python", ("python3", "python3-pip", "ca-certificates"), cmd=("python3",))
STATIC = Recipe("static", ("busybox",), cmd=("busybox", "httpd", "-f", "-p", "8080"))
RECIPES = (BUILDER, PYTHON, STATIC)


@dataclass(frozen=True)
class BuilderLayer:
    tar: Path
    digest: str  # sha256:... of the uncompressed tar (also its diff id)
    size: int
    key: str


def recipe_key(recipe: Recipe, mirror: str) -> str:
    parts = {"recipe": RECIPE, "suite": SUITE, "packages": recipe.packages,
             "files": recipe.files, "exclude": EXCLUDE, "mirror": mirror}  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


_lock = asyncio.Lock()


async def debian_layer(cache_dir: Path, mirror: str, recipe: Recipe) -> BuilderLayer:
    """The cached layer, built first if missing (one debootstrap at a time here)."""
    async with _lock:
        return await asyncio.to_thread(_ensure, cache_dir, mirror, recipe)


def prepare(cache_dir: Path, mirror: str) -> list[BuilderLayer]:
    """Every recipe's layer, made now if missing: `make setup` calls this (through `python
    -m ember.system prepare`) because the server may run where no Debian mirror is
    reachable (a network namespace, a host without egress); a build then finds them."""
    return [_ensure(cache_dir, mirror, recipe) for recipe in RECIPES]


def _ensure(cache_dir: Path, mirror: str, recipe: Recipe) -> BuilderLayer:
    key = recipe_key(recipe, mirror)
    done = cache_dir / f"{recipe.name}-{key}"
    if not (done / "digest").exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".make-") as tmp:
            work = Path(tmp)
            _debootstrap(work / "rootfs", mirror, recipe)
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


def _debootstrap(root: Path, mirror: str, recipe: Recipe) -> None:
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(recipe.packages)}", SUITE,
          str(root), mirror], f"debootstrap of {recipe.name}")  # fmt: skip
    for name, text in recipe.files:
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
