"""Assemble the initrd: busybox, kernel modules, /init and the agent.

The result lives at ``initrd/<hash>/initrd.gz`` where the hash covers every
input (busybox binary, init script, agent binary, module files and load
order), so it is rebuilt exactly when one of them changes and instances that
booted an older one can still find theirs.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ember.errors import Unavailable
from ember.system.kernel import Kernel

INIT_SCRIPT = Path(__file__).resolve().parent.parent / "guest" / "init"
BUSYBOX = Path("/bin/busybox")


def _inputs(kernel: Kernel, agent: Path) -> list[tuple[str, Path]]:
    """(path in initrd, source file) for every file copied in."""
    files = [("bin/busybox", BUSYBOX), ("init", INIT_SCRIPT), ("ember/agent", agent)]
    files += [(f"lib/modules/{rel}", kernel.modules_dir / rel) for rel in kernel.load_order()]
    return files


def initrd_hash(kernel: Kernel, agent: Path) -> str:
    digest = hashlib.sha256()
    for dest, src in _inputs(kernel, agent):
        digest.update(dest.encode() + b"\0")
        digest.update(hashlib.sha256(src.read_bytes()).digest())
    digest.update("\n".join(kernel.load_order()).encode())
    return digest.hexdigest()[:16]


def build_initrd(system_dir: Path, kernel: Kernel, agent: Path) -> tuple[Path, str]:
    if not BUSYBOX.exists():
        raise Unavailable(f"{BUSYBOX} is missing: install busybox-static (run `make setup`)")
    digest = initrd_hash(kernel, agent)
    out = system_dir / "initrd" / digest / "initrd.gz"
    if out.exists():
        return out, digest
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ember-initrd-") as tmp:
        root = Path(tmp)
        _populate(root, kernel, agent)
        archive = subprocess.run(
            "find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0",
            shell=True,
            cwd=root,
            check=True,
            capture_output=True,
        ).stdout
    tmp_out = out.with_name("initrd.gz.tmp")
    # mtime=0 keeps the output byte-identical for identical inputs.
    tmp_out.write_bytes(gzip.compress(archive, compresslevel=6, mtime=0))
    os.replace(tmp_out, out)
    return out, digest


def _populate(root: Path, kernel: Kernel, agent: Path) -> None:
    for d in ("bin", "dev", "proc", "sys", "etc", "tmp", "mnt"):
        (root / d).mkdir()
    for dest, src in _inputs(kernel, agent):
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / dest)
        (root / dest).chmod(0o755 if dest in ("init", "bin/busybox", "ember/agent") else 0o644)
    # Applet symlinks made here rather than with `busybox --install` at boot.
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "sbin").symlink_to("bin")
    (root / "etc" / "modules.load").write_text("\n".join(kernel.load_order()) + "\n")
