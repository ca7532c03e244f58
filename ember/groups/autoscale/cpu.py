"""The `cpu` metric's source: how much of the time a member's vCPUs wanted a host core.

Read from the kernel's per-thread scheduler statistics (`/proc/<pid>/task/<tid>/
schedstat`: nanoseconds on a CPU, nanoseconds runnable but waiting for one). The
VMM's vCPU threads are the `vcpus` threads with the most time on a CPU since the VM
started: under TCG (and KVM) every guest instruction runs on them, so they outweigh
the main loop and I/O threads by far (measured here: 13.6 s vs 0.6 s for a busy guest,
4.5 s vs 0.4 s for an idle one).

Why run + wait and not the CPU time alone: on a shared host the CPU time says how much
the host gave, not how much the guest asked for. Measured on this 2-core machine at a
load average of 14: a guest burning its vCPU got 21-37% of a core, an idle one 8-14%,
too close to tell apart; its vCPU thread's run + wait was ~100% busy and ~0.2% idle.
Without contention the two figures are the same.
"""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def vcpu_demand_seconds(pid: int, vcpus: int, proc: Path = PROC) -> float | None:
    """Seconds the `vcpus` busiest threads of `pid` ran or waited to run since they
    started; None when the process is gone."""
    samples = []
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            run, wait, _ = (int(f) for f in (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        samples.append((run, wait))
    if not samples:
        return None
    busiest = sorted(samples, reverse=True)[: max(vcpus, 1)]
    return sum(run + wait for run, wait in busiest) / 1e9


__all__ = ["vcpu_demand_seconds"]
