"""Where an instance's files live: the one place that knows the layout.

```
<data_dir>/instances/<id>/          kept while the instance exists
    overlay.ext4                    writable upper layer of the root (ext4, sparse)
    config.disk                     guest config + exit record (rewritten at each boot)
    vmm.out                         the VMM's own stderr while it runs (folded into logs)
    logs/app.log                    serial console
    logs/vmm.log                    hypervisor command line, start-up output, exit words
    logs/hypeman.log                what Ember did (one stamped line per operation)
    memory.ram  standby/            the saved VM, laid out by `SavedVMFiles`
                                    (ember/snapshots/layout.py), as in a snapshot
<runtime_dir>/<id>/                 only while a VMM runs; short path for Unix sockets
    qmp.sock  agent.sock  vmm.pid
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ember.hypervisor import VMHandle
from ember.instances.logs import LogSource
from ember.snapshots.layout import SavedVMFiles


@dataclass(frozen=True, slots=True)
class InstanceLayout(SavedVMFiles):
    """The paths of one instance: its saved-VM files, logs and runtime sockets."""

    run: Path

    @property
    def vmm_output(self) -> Path:
        return self.dir / "vmm.out"

    def log(self, source: LogSource) -> Path:
        return self.dir / "logs" / f"{source}.log"

    @property
    def qmp(self) -> Path:
        return self.run / "qmp.sock"

    @property
    def agent(self) -> Path:
        return self.run / "agent.sock"

    @property
    def pid_file(self) -> Path:
        return self.run / "vmm.pid"

    def handle(self, pid: int) -> VMHandle:
        return VMHandle(pid=pid, qmp_socket=self.qmp, agent_socket=self.agent)

    def read_pid(self) -> int | None:
        """The VMM's pid from its pid file: known even when a create was cut short."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Layout:
    """The roots under which every instance gets its two directories."""

    instances_dir: Path
    runtime_dir: Path

    def of(self, instance_id: str) -> InstanceLayout:
        return InstanceLayout(self.instances_dir / instance_id, self.runtime_dir / instance_id)

    def ensure_roots(self) -> None:
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(parents=True, exist_ok=True)

    def instance_ids_on_disk(self) -> set[str]:
        """Ids with a directory in this data dir, for sweeping orphans (not the runtime dir:
        several servers with their own data dirs may share it)."""
        if not self.instances_dir.is_dir():
            return set()
        return {p.name for p in self.instances_dir.iterdir() if p.is_dir()}
