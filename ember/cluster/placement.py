"""Where a new instance goes: filter the live hosts, then score the best of a few.

Filter: the host has the vCPUs and memory free (its published `GET /resources`
figures, less what this gateway placed there since), every requested label, and the
image ready, when some host publishes that image's name (a name none publishes, e.g.
a short name of a pushed image or one still pulling, is left to the hosts to answer).
Score: the share of memory and CPU left after the placement, so load spreads; of a
random sample of `SAMPLE` fitting hosts the best goes first (the power of a few
choices: two gateways placing at once rarely pick the same host, and no gateway
needs a global view), then the rest, best first, as fallbacks for refusals.
Rejected: a global optimiser (needs one placer, i.e. a leader) and plain
least-loaded (every gateway herds onto the same host between two publishes).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from ember.cluster.discovery import HostStatus

SAMPLE = 3


@dataclass(frozen=True)
class Want:
    vcpus: int
    memory_bytes: int
    labels: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None  # a normalized image name the host must have ready


@dataclass
class Recent:
    """What this gateway placed lately, not yet in the hosts' published figures."""

    window: float
    clock: Callable[[], float] = time.monotonic
    _placed: list[tuple[float, str, Want]] = field(default_factory=list)

    def add(self, host: str, want: Want) -> None:
        self._placed.append((self.clock(), host, want))

    def on(self, host: str) -> Want:
        since = self.clock() - self.window
        self._placed = [p for p in self._placed if p[0] >= since]
        mine = [w for _, h, w in self._placed if h == host]
        return Want(sum(w.vcpus for w in mine), sum(w.memory_bytes for w in mine))


def fits(host: HostStatus, want: Want, pending: Want) -> bool:
    return (
        host.cpu.available - pending.vcpus >= want.vcpus
        and host.memory.available - pending.memory_bytes >= want.memory_bytes
        and all(host.labels.get(k) == v for k, v in want.labels.items())
        and (want.image is None or want.image in host.images)
    )


def score(host: HostStatus, want: Want, pending: Want) -> float:
    """Higher is better: the shares of memory and CPU left once `want` is placed."""
    memory = host.memory.available - pending.memory_bytes - want.memory_bytes
    cpu = host.cpu.available - pending.vcpus - want.vcpus
    return memory / max(host.memory.effective_limit, 1) + cpu / max(host.cpu.effective_limit, 1)


def rank(
    hosts: Iterable[HostStatus],
    want: Want,
    recent: Recent,
    *,
    rng: random.Random | None = None,
) -> list[HostStatus]:
    """The fitting hosts in the order to try them (empty: none fits)."""
    hosts = list(hosts)
    if not any(want.image in h.images for h in hosts):
        want = replace(want, image=None)
    fitting = [h for h in hosts if fits(h, want, recent.on(h.name))]
    sample = (rng or random).sample(fitting, min(SAMPLE, len(fitting)))

    def best_first(group: list[HostStatus]) -> list[HostStatus]:
        return sorted(group, key=lambda h: -score(h, want, recent.on(h.name)))

    return best_first(sample) + best_first([h for h in fitting if h not in sample])
