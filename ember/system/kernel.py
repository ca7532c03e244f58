"""Guest kernel: Debian's cloud kernel, downloaded (not installed) and trimmed.

``prepare_kernel`` resolves the ``linux-image-cloud-amd64`` metapackage to its
concrete package, fetches it with ``apt-get download``, unpacks it with
``dpkg -x`` and keeps only vmlinuz plus the modules the initrd needs (and
their dependencies, found with ``depmod``) under ``kernel/<version>/``.

``kernel/<version>`` is a symlink to one build, ``kernel/<version>.<n>/``: a
rebuild (the wanted modules changed) fills a new build and swaps the link in
one rename, so a VM booting at that instant opens the old build or the new one,
never a half-removed directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ember.errors import Unavailable

METAPACKAGE = "linux-image-cloud-amd64"
# Drivers for microvm's virtio-mmio devices plus the root filesystem stack.
# ext4 (and jbd2, mbcache, crc16) is built into Debian's cloud kernel.
WANTED_MODULES = (
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_balloon",  # free page reporting: standby memory files shrink
    "overlay",
    "erofs",
    "ext4",
)
_PACKAGE_RE = re.compile(r"Depends: (linux-image-\S+-cloud-amd64)")


@dataclass(frozen=True, slots=True)
class Kernel:
    version: str
    dir: Path

    @property
    def vmlinuz(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def modules_dir(self) -> Path:
        return self.dir / "modules" / "lib" / "modules" / self.version

    def load_order(self) -> list[str]:
        """Module paths (relative to modules_dir) in an order insmod accepts."""
        return (self.dir / "modules.load").read_text().split()


def _run(*args: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise Unavailable(f"{args[0]} is not installed (run `make setup`)") from exc
    except subprocess.CalledProcessError as exc:
        raise Unavailable(f"{' '.join(args)} failed: {exc.stderr.strip()}") from exc
    return proc.stdout


def resolve_package() -> str:
    """The concrete ``linux-image-<ver>-cloud-amd64`` the metapackage points at."""
    match = _PACKAGE_RE.search(_run("apt-cache", "depends", METAPACKAGE))
    if match is None:
        raise Unavailable(f"apt-cache cannot resolve {METAPACKAGE}; run `apt-get update`")
    return match.group(1)


def _parse_modules_dep(text: str) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        module, _, rest = line.partition(":")
        deps[module] = rest.split()
    return deps


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def load_order(modules_dep: str, wanted: tuple[str, ...], builtin: set[str]) -> list[str]:
    """Topologically order the wanted modules and their dependencies (deps first)."""
    deps = _parse_modules_dep(modules_dep)
    by_name = {_module_name(path): path for path in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps[path]:
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
        elif name not in builtin:
            raise Unavailable(f"kernel module {name} is neither a module nor built in")
    return order


def prepare_kernel(system_dir: Path) -> Kernel:
    package = resolve_package()
    version = package.removeprefix("linux-image-")
    kernel = Kernel(version, system_dir / "kernel" / version)
    # Rebuilt when the wanted modules changed: a new module must reach the initrd.
    wanted = kernel.dir / "wanted"
    if (kernel.dir / "modules.load").exists() and (
        wanted.exists() and wanted.read_text().split() == list(WANTED_MODULES)
    ):
        return kernel
    with tempfile.TemporaryDirectory(prefix="ember-kernel-") as tmp:
        work = Path(tmp)
        _run("apt-get", "download", package, cwd=work)
        (deb,) = work.glob("*.deb")
        _run("dpkg", "-x", str(deb), str(work / "root"))
        _install(work / "root", kernel)
    return kernel


def _install(root: Path, kernel: Kernel) -> None:
    """Copy vmlinuz and the needed modules into a fresh dir, then rename into place."""
    src_modules = root / "lib" / "modules" / kernel.version
    _run("depmod", "-b", str(root), kernel.version)
    builtin = {_module_name(line) for line in (src_modules / "modules.builtin").read_text().split()}
    order = load_order((src_modules / "modules.dep").read_text(), WANTED_MODULES, builtin)

    staging = kernel.dir.with_name(f"{kernel.dir.name}.{time.time_ns()}")
    dst_modules = staging / "modules" / "lib" / "modules" / kernel.version
    for rel in order:
        (dst_modules / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_modules / rel, dst_modules / rel)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy2(src_modules / name, dst_modules / name)
    _run("depmod", "-b", str(staging / "modules"), kernel.version)
    shutil.copy2(root / "boot" / f"vmlinuz-{kernel.version}", staging / "vmlinuz")
    (staging / "modules.load").write_text("\n".join(order) + "\n")
    (staging / "version").write_text(kernel.version + "\n")
    (staging / "wanted").write_text("\n".join(WANTED_MODULES) + "\n")
    switch_build(kernel.dir, staging)


def switch_build(link: Path, build: Path) -> None:
    """Point `link` at `build` (a sibling directory) in one rename, then remove the builds
    older than the one it replaced (a boot may have resolved that one a moment ago)."""
    previous = link.resolve() if link.exists() else None
    if link.is_dir() and not link.is_symlink():
        # A build from before versioned builds: moved aside once (the only non-atomic
        # step, and only on the first rebuild after an upgrade).
        previous = link.with_name(f"{link.name}.0")
        shutil.rmtree(previous, ignore_errors=True)
        link.rename(previous)
    swap = link.with_name(f"{link.name}.link")
    swap.unlink(missing_ok=True)
    swap.symlink_to(build.name)
    os.replace(swap, link)
    keep = {build.resolve(), previous}
    for old in link.parent.glob(f"{link.name}.*"):
        if old.is_dir() and not old.is_symlink() and old.resolve() not in keep:
            shutil.rmtree(old, ignore_errors=True)
