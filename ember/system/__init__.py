"""Boot artifacts shared by every VM: guest kernel and initrd (with the agent).

``prepare`` (run by ``make setup``) builds them; ``load`` (server start) only
checks they exist. ``current.json`` names the artifacts of the last prepare.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ember.errors import Unavailable
from ember.system.agent import build_agent
from ember.system.initrd import build_initrd
from ember.system.kernel import prepare_kernel

log = logging.getLogger("ember.system")

DEFAULT_SYSTEM_DIR = Path("/var/lib/ember/system")
# Appended to by the hypervisor; `quiet` keeps kernel chatter out of app logs.
KERNEL_CMDLINE = "console=ttyS0 reboot=t panic=-1 quiet pci=off"


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
    log.info("system: guest kernel in %s", system_dir)
    kernel = prepare_kernel(system_dir)
    log.info("system: guest kernel %s; building the guest agent", kernel.version)
    agent = build_agent(system_dir)
    log.info("system: building the initrd")
    initrd, digest = build_initrd(system_dir, kernel, agent)
    log.info("system: initrd %s ready", digest)
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


class BootSystem:
    """The boot artifacts a server uses, prepared at its start when they are missing.

    A server on a new data dir needs no `make setup` of its own: it reuses the
    artifacts of the default location when they exist there, and otherwise
    prepares its own in the background (creates answer 503 until then).
    """

    def __init__(self, system_dir: Path) -> None:
        self.system_dir = system_dir
        self._artifacts: BootArtifacts | None = None
        self._problem = f"the guest kernel and initrd in {system_dir} are being prepared"
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        for candidate in dict.fromkeys((self.system_dir, DEFAULT_SYSTEM_DIR)):
            try:
                self._artifacts = load(candidate)
            except Unavailable:
                continue
            log.info("system: kernel %s, initrd %s from %s", self._artifacts.kernel_version,
                     self._artifacts.initrd_hash, candidate)  # fmt: skip
            return
        log.warning("system: no prepared guest kernel and initrd; preparing %s", self.system_dir)
        self._task = asyncio.create_task(self._prepare())

    async def _prepare(self) -> None:
        try:
            self._artifacts = await asyncio.to_thread(prepare, self.system_dir)
        except Exception as exc:
            log.exception("system: cannot prepare the guest kernel and initrd")
            self._problem = f"the guest kernel and initrd could not be prepared: {exc}"

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def current(self) -> BootArtifacts:
        if self._artifacts is None:
            raise Unavailable(self._problem)
        return self._artifacts
