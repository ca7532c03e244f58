"""Resource use of a VM, read from its VMM process in /proc (what the host really spends)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcessStats:
    cpu_seconds: float
    rss_bytes: int
    vms_bytes: int


def process_stats(pid: int, proc: Path = Path("/proc")) -> ProcessStats | None:
    """CPU time (user + system) and memory of `pid`; None if it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        statm = (proc / str(pid) / "statm").read_text().split()
    except OSError:
        return None
    # Fields after the parenthesised command name, which may itself contain spaces.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return ProcessStats(
        cpu_seconds=(utime + stime) / _TICKS,
        rss_bytes=int(statm[1]) * _PAGE,
        vms_bytes=int(statm[0]) * _PAGE,
    )
