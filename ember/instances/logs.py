"""Per-instance log files and reading them: tail, then optionally follow.

Three sources, as in Hypeman: `app` (the guest's serial console), `vmm` (the
hypervisor's own output) and `hypeman` (what Ember did to the instance).
Following polls the file's size: simpler than inotify, works on every
filesystem, and a 100 ms poll is far below a person's notice.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path

from ember.logsetup import append_stamped

FOLLOW_POLL_SECONDS = 0.1
READ_CHUNK = 64 * 1024


class LogSource(StrEnum):
    APP = "app"
    VMM = "vmm"
    HYPEMAN = "hypeman"


def record_event(path: Path, message: str) -> None:
    """Append one stamped line to an instance's operations log (the `hypeman` source)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    append_stamped(path, [message])


def _clean(line: bytes) -> str:
    return line.decode(errors="replace").rstrip("\r\n").replace("\r", "")


def _tail(path: Path, count: int) -> tuple[list[str], int]:
    """The last `count` lines and the offset just past the last complete line."""
    if count <= 0:
        with path.open("rb") as src:
            data = src.read()
        return [], data.rfind(b"\n") + 1
    lines: deque[bytes] = deque(maxlen=count)
    offset = 0
    with path.open("rb") as src:
        for line in src:
            if not line.endswith(b"\n"):
                break
            lines.append(line)
            offset += len(line)
    return [_clean(line) for line in lines], offset


async def read_log(path: Path, *, tail: int = 100, follow: bool = False) -> AsyncIterator[str]:
    """Yield the last `tail` lines, then (if `follow`) new lines as they are written.

    The file (or its instance directory) vanishing means the instance was deleted:
    the stream then simply ends.
    """
    try:
        if not path.exists():
            if not follow:
                return
            # Not parents=True: a deleted instance's directory must not come back.
            path.parent.mkdir(exist_ok=True)
            path.touch()
        lines, offset = await asyncio.to_thread(_tail, path, tail)
    except FileNotFoundError:
        return
    for line in lines:
        yield line
    if not follow:
        return
    pending = b""
    while True:
        try:
            size = await asyncio.to_thread(os.path.getsize, path)
            if size < offset:  # truncated or replaced: start from its beginning
                offset, pending = 0, b""
            if size == offset:
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
                continue
            with path.open("rb") as src:
                src.seek(offset)
                chunk = src.read(min(size - offset, READ_CHUNK))
        except FileNotFoundError:
            return
        offset += len(chunk)
        *complete, pending = (pending + chunk).split(b"\n")
        for raw in complete:
            yield _clean(raw)
