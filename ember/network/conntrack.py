"""TCP flows as the kernel's connection tracking sees them, through the `conntrack`
command (Debian's `conntrack` package).

Two calls: `established()` lists the ESTABLISHED TCP flows of the current network
namespace (one `conntrack -L` for all guests at once), and `ConntrackEvents` follows
`conntrack -E` (one long-lived process) to say when any flow started, changed or
ended, so a reader need not poll to notice activity. A flow is described by its
original direction: who opened it (`src`, `sport`) and to whom (`dst`, `dport`).

Why the command and not netlink through pyroute2: pyroute2 0.9 wraps dumps but not
event subscription (its async socket would need the multicast groups bound by hand),
while `conntrack -E` is one line per event, flushed per event, and keeps netlink
parsing out of the server's process. A dump costs one process start (a few ms),
paid once per pass for every guest, not per guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from ember.tasks import PeriodicTask

log = logging.getLogger("ember.network")

BINARY = "conntrack"
LIST_TIMEOUT = 10.0  # seconds: a dump that takes longer is an observer error


class ConntrackError(Exception):
    """The table could not be read (no `conntrack` command, no permission, ...)."""


@dataclass(frozen=True, slots=True)
class Flow:
    src: str
    dst: str
    sport: int
    dport: int
    state: str  # TCP state, e.g. ESTABLISHED, TIME_WAIT ("" when not shown)


def binary() -> str | None:
    """Path of the `conntrack` command, None when it is not installed."""
    return shutil.which(BINARY)


def parse_line(line: str) -> Flow | None:
    """The original direction of one line of `conntrack -L` / `-E` output (tcp only);
    None for anything else (summary lines, other protocols)."""
    fields = line.split()
    if "tcp" not in fields:
        return None
    values: dict[str, str] = {}
    state = ""
    for item in fields:
        key, sep, value = item.partition("=")
        if sep:
            values.setdefault(key, value)  # first occurrence: the original direction
        elif item.isupper() and item.replace("_", "").isalpha() and not values:
            state = item  # the TCP state comes before the tuples
    try:
        return Flow(values["src"], values["dst"], int(values["sport"]), int(values["dport"]), state)
    except (KeyError, ValueError):
        return None


async def established() -> list[Flow]:
    """Every ESTABLISHED TCP flow of this network namespace."""
    command = binary()
    if command is None:
        raise ConntrackError("the conntrack command is not installed (apt-get install conntrack)")
    process = await asyncio.create_subprocess_exec(
        command, "-L", "-p", "tcp", "--state", "ESTABLISHED",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(LIST_TIMEOUT):
            out, err = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise ConntrackError(f"conntrack -L took more than {LIST_TIMEOUT:.0f}s") from None
    if process.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise ConntrackError(f"conntrack -L failed: {detail[-1] if detail else process.returncode}")
    flows = (parse_line(line) for line in out.decode(errors="replace").splitlines())
    return [flow for flow in flows if flow is not None]


class ConntrackEvents:
    """Follows `conntrack -E -p tcp -e NEW,UPDATE` and calls `on_flow` for every event, in the event
    loop. Restarts the command if it dies (after a second), until `close()`."""

    RESTART_DELAY = 1.0

    def __init__(self, on_flow: Callable[[Flow], None]) -> None:
        self._on_flow = on_flow
        self.error: str | None = None  # why events are not being followed now
        self._loop = PeriodicTask(
            "conntrack events", self._follow_once, self.RESTART_DELAY, log=log
        )

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()

    async def _follow_once(self) -> None:
        try:
            await self._follow()
        except (OSError, ConntrackError) as exc:
            self.error = str(exc)
            log.warning("conntrack events: %s", exc)

    async def _follow(self) -> None:
        command = binary()
        if command is None:
            raise ConntrackError("the conntrack command is not installed")
        process = await asyncio.create_subprocess_exec(
            # NEW and UPDATE come from packets; DESTROY mostly from a timeout long after
            # the last packet (TIME_WAIT ends 2 minutes later): not activity.
            command, "-E", "-p", "tcp", "-e", "NEW,UPDATE",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            self.error = None
            while line := await process.stdout.readline():
                flow = parse_line(line.decode(errors="replace"))
                if flow is not None:
                    self._on_flow(flow)
            raise ConntrackError(f"conntrack -E ended (exit {await process.wait()})")
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
