"""Why an instance stopped: the Unikraft Cloud `stop_reason` bitmask, kept exact.

Bit 4 Forced, 3 User, 2 Platform, 1 App, 0 Kernel. Who asked is known before the VM
goes down (a user's stop: User|Platform, since the platform carries it out; a
scale-to-zero: Platform); how it ended is known after: App when the workload exited
on its own terms (an exit code, no signal), Kernel when the guest shut itself down
(never for a forced stop, whose VM was killed). The seed's examples come out as
they are listed: 15 a clean user stop, 13 a user stop whose workload was killed by
a signal, 28 a forced user stop, 7 a scale-to-zero, 3 the program exited, 1 a
guest that went down without the workload reporting an exit, 0 unknown.

A standby is counted as a clean stop of program and kernel (nothing of them is
lost): 7 when the platform scaled the instance to zero, 15 when the user asked.
"""

from __future__ import annotations

from enum import IntFlag
from typing import Literal

StopOrigin = Literal["user", "platform"]


class StopReason(IntFlag):
    KERNEL = 1
    APP = 2
    PLATFORM = 4
    USER = 8
    FORCED = 16


def requested(origin: StopOrigin) -> StopReason:
    """The bits a stop asked for by `origin` carries from the start."""
    return StopReason.USER | StopReason.PLATFORM if origin == "user" else StopReason.PLATFORM


def ended(asked: int | None, *, forced: bool, exit_code: int | None, signal: int) -> StopReason:
    """The whole mask once the VMM is gone: `asked` (None: nobody asked, the guest
    ended by itself) plus how the workload and the guest ended."""
    reason = StopReason(asked or 0)
    if forced:
        return reason | StopReason.FORCED
    if exit_code is not None and signal == 0:
        reason |= StopReason.APP
    return reason | StopReason.KERNEL


def standby(origin: StopOrigin) -> StopReason:
    return requested(origin) | StopReason.APP | StopReason.KERNEL


def letters(reason: int) -> str:
    """The seed's alias, e.g. 15 -> "-UPAK"."""
    return "".join(
        letter if reason & flag else "-"
        for letter, flag in zip("FUPAK", [16, 8, 4, 2, 1], strict=True)
    )


def describe(reason: int, exit_code: int | None) -> str:
    """One line telling the cases apart, for `exit_message` and the group's view."""
    flags = StopReason(reason)
    who = (
        "stopped by the user" if StopReason.USER in flags
        else "scaled to zero by the platform" if StopReason.PLATFORM in flags
        else None
    )  # fmt: skip
    if StopReason.FORCED in flags:
        return f"{who or 'stopped'}, forced off (the workload did not exit in time)"
    if who is not None:
        return who
    if StopReason.APP in flags:
        return f"the program exited with code {exit_code}"
    if StopReason.KERNEL in flags:
        return "the guest went down without the program reporting an exit"
    return "unknown"


__all__ = ["StopOrigin", "StopReason", "describe", "ended", "letters", "requested", "standby"]
