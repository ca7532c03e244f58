"""Per-instance log files and reading them: tail, then optionally follow.

Three sources, as in Hypeman: `app` (the workload's output, from the guest's
application console), `vmm` (the hypervisor's own output and the guest kernel's
console) and `hypeman` (what Ember did to the instance).
Following polls the file's size: simpler than inotify, works on every
filesystem, and a 100 ms poll is far below a person's notice.

Size cap: `rotate` moves a file past `instance_log_max_bytes` to `<name>.1`
(replacing the previous one) and empties it in place ("copytruncate"): QEMU
holds the app and vmm logs open with O_APPEND, so its next write lands at the
start of the emptied file, and no process needs to reopen anything. Lines
written between the copy and the truncate are lost; that window is one copy of
at most the cap. A tail reads `<name>.1` first when the current file is short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from enum import StrEnum
from pathlib import Path

from ember.logsetup import append_stamped
from ember.tasks import PeriodicTask

FOLLOW_POLL_SECONDS = 0.1
READ_CHUNK = 64 * 1024
ROTATE_POLL_SECONDS = 1.0
log = logging.getLogger("ember.instances")


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


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def rotate(path: Path, max_bytes: int) -> bool:
    """Past `max_bytes`: keep the file as `<name>.1` and empty it in place."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        partial = path.with_name(path.name + ".1.partial")
        shutil.copyfile(path, partial)
        partial.replace(rotated(path))
        os.truncate(path, 0)
    except FileNotFoundError:  # the instance was deleted meanwhile
        return False
    return True


class LogRotator:
    """Keeps every instance log under the cap: checks their sizes every second."""

    def __init__(self, paths: Callable[[], Iterable[Path]], max_bytes: int) -> None:
        self._paths, self.max_bytes = paths, max_bytes
        self._loop = PeriodicTask(
            "log rotation", lambda: asyncio.to_thread(self.run_once), ROTATE_POLL_SECONDS, log=log
        )

    def run_once(self) -> list[Path]:
        return [path for path in self._paths() if rotate(path, self.max_bytes)]

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()


def _tail(path: Path, count: int) -> tuple[list[str], int]:
    """The last `count` lines (from the rotated file too when this one has fewer) and the
    offset just past the last complete line of `path`."""
    if count <= 0:
        with path.open("rb") as src:
            data = src.read()
        return [], data.rfind(b"\n") + 1
    lines: deque[bytes] = deque(maxlen=count)
    with contextlib.suppress(FileNotFoundError), rotated(path).open("rb") as old:
        lines.extend(line if line.endswith(b"\n") else line + b"\n" for line in old)
    offset = 0
    with path.open("rb") as src:
        for line in src:
            if not line.endswith(b"\n"):
                break
            lines.append(line)
            offset += len(line)
    return [_clean(line) for line in lines], offset


async def read_log(
    path: Path,
    *,
    tail: int = 100,
    follow: bool = False,
    ended: Callable[[], bool] | None = None,
) -> AsyncIterator[str]:
    """Yield the last `tail` lines, then (if `follow`) new lines as they are written.

    The stream ends once `ended()` holds (the instance stopped: nothing more will be
    written) and every line written until then was read; and when the file (or its
    instance directory) vanishes, i.e. the instance was deleted.
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
                # Asked after the size: a line written in between is read before the end.
                if ended is not None and ended():
                    if await asyncio.to_thread(os.path.getsize, path) == offset:
                        break
                    continue
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
    if pending:  # the last words of a VM that ended mid-line
        yield _clean(pending)
