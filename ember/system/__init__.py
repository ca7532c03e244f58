"""Boot artifacts shared by every VM: guest kernel and initrd (with the agent).

``prepare`` (run by ``make setup``) builds them; ``load`` (server start) only
checks they exist. ``current.json`` names the artifacts of the last prepare.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ember.errors import Unavailable
from ember.system.agent import build_agent
from ember.system.initrd import build_initrd
from ember.system.kernel import prepare_kernel

DEFAULT_SYSTEM_DIR = Path("/var/lib/ember/system")
# Appended to by the hypervisor; `quiet` keeps kernel chatter out of app logs.
KERNEL_CMDLINE = "console=ttyS0 reboot=t panic=-1 quiet"


@dataclass(frozen=True, slots=True)
class BootArtifacts:
    kernel: Path
    initrd: Path
    kernel_version: str
    initrd_hash: str
    cmdline: str = KERNEL_CMDLINE


def prepare(system_dir: Path = DEFAULT_SYSTEM_DIR) -> BootArtifacts:
    """Fetch the kernel, build agent and initrd (each step idempotent)."""
    system_dir.mkdir(parents=True, exist_ok=True)
    kernel = prepare_kernel(system_dir)
    agent = build_agent(system_dir)
    initrd, digest = build_initrd(system_dir, kernel, agent)
    artifacts = BootArtifacts(kernel.vmlinuz, initrd, kernel.version, digest)
    current = {"kernel_version": kernel.version, "initrd_hash": digest}
    tmp = system_dir / "current.json.tmp"
    tmp.write_text(json.dumps(current) + "\n")
    os.replace(tmp, system_dir / "current.json")
    return artifacts


def load(system_dir: Path = DEFAULT_SYSTEM_DIR) -> BootArtifacts:
    """The prepared artifacts; Unavailable with a hint if `make setup` never ran."""
    try:
        current = json.loads((system_dir / "current.json").read_text())
        version, digest = str(current["kernel_version"]), str(current["initrd_hash"])
    except (OSError, ValueError, KeyError) as exc:
        raise Unavailable(
            f"guest kernel and initrd are not prepared in {system_dir}: run `make setup`"
        ) from exc
    artifacts = BootArtifacts(
        kernel=system_dir / "kernel" / version / "vmlinuz",
        initrd=system_dir / "initrd" / digest / "initrd.gz",
        kernel_version=version,
        initrd_hash=digest,
    )
    for path in (artifacts.kernel, artifacts.initrd):
        if not path.is_file():
            raise Unavailable(f"{path} is missing: run `make setup`")
    return artifacts
