"""Instance states and the single-hop transitions between them.

Every state change goes through `check_transition`, so an impossible hop
(say Stopped -> Running without booting) is a bug caught where it happens.
Multi-hop flows (create = Created -> Initializing -> Running) are composed by
the manager from these single hops.
"""

from __future__ import annotations

from enum import StrEnum

from ember.errors import InvalidState


class State(StrEnum):
    CREATED = "Created"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    PAUSED = "Paused"
    SHUTDOWN = "Shutdown"
    STOPPED = "Stopped"
    STANDBY = "Standby"
    UNKNOWN = "Unknown"


_NEXT: dict[State, set[State]] = {
    State.CREATED: {State.INITIALIZING, State.STOPPED},
    State.INITIALIZING: {State.RUNNING, State.SHUTDOWN, State.STOPPED},
    State.RUNNING: {State.PAUSED, State.SHUTDOWN, State.STOPPED, State.STANDBY},
    State.PAUSED: {State.RUNNING, State.STOPPED, State.STANDBY},
    State.SHUTDOWN: {State.STOPPED},
    State.STOPPED: {State.INITIALIZING, State.STANDBY},  # STANDBY: a snapshot restored into it
    State.STANDBY: {State.INITIALIZING, State.RUNNING, State.STOPPED},
    State.UNKNOWN: set(State),
}
# A VMM is (or should be) alive in these states.
ACTIVE = {State.INITIALIZING, State.RUNNING, State.PAUSED, State.SHUTDOWN}
# States that last until someone acts: a wait for any other state ends on them.
SETTLED = {State.STOPPED, State.STANDBY, State.UNKNOWN}


def can_transition(current: State, target: State) -> bool:
    return target == State.UNKNOWN or target in _NEXT[current]


def check_transition(current: State, target: State) -> None:
    if not can_transition(current, target):
        raise InvalidState(f"cannot go from {current} to {target}")
