"""Copying files in and out of a guest, on top of exec sessions.

The agent binary doubles as the copy tool (`agent cp-out`, `agent cp-in`, see
agent.c), run as an ordinary exec session: copies reuse the exec channel's
credit-based flow control and need no image tooling (no tar, no shell).
`cp-out` emits, per entry, a JSON header line followed by exactly `size`
content bytes for regular files; `read_tree` turns that stream back into
headers and data chunks without holding a file in memory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ember.guest.client import AgentError, ExecSession

AGENT_IN_GUEST = "/.ember/agent"  # where the initrd's /init installs the agent
MAX_HEADER = 64 * 1024


def cp_out_argv(path: str, follow_links: bool) -> list[str]:
    return [AGENT_IN_GUEST, "cp-out", path, "1" if follow_links else "0"]


def cp_in_argv(path: str, mode: int, uid: int | None, gid: int | None, is_dir: bool) -> list[str]:
    owner = [str(uid) if uid is not None else "-", str(gid) if gid is not None else "-"]
    return [AGENT_IN_GUEST, "cp-in", path, f"{mode:o}", *owner, "1" if is_dir else "0"]


@dataclass
class Header:
    fields: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.fields.get("size", 0))


async def read_tree(session: ExecSession) -> AsyncIterator[Header | bytes]:
    """Headers and file content from a `cp-out` session; AgentError with its stderr on failure."""
    buffer = bytearray()
    remaining = 0  # content bytes still owed to the current file
    stderr = bytearray()
    while (chunk := await session.read()) is not None:
        stream, data = chunk
        if stream == "stderr":
            stderr.extend(data[: 4096 - len(stderr)])
            continue
        buffer.extend(data)
        while buffer:
            if remaining:
                piece = bytes(buffer[:remaining])
                del buffer[: len(piece)]
                remaining -= len(piece)
                yield piece
                continue
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_HEADER:
                    raise AgentError("copy stream header too long")
                break
            header = Header(json.loads(bytes(buffer[:end])))
            del buffer[: end + 1]
            remaining = header.size
            yield header
    result = session.result
    if result is None or result.exit_code != 0 or remaining or buffer:
        message = stderr.decode(errors="replace").strip() or (result.message if result else "")
        raise AgentError(message or "copy out of the guest failed")
