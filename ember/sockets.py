"""Connecting to the Unix sockets QEMU serves (QMP, the agent port)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from ember.errors import Unavailable

RETRY_INTERVAL = 0.05


async def connect_unix(
    path: Path, timeout: float, what: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, retrying until the socket exists and accepts (QEMU creates it as it starts)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.open_unix_connection(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() >= deadline:
                raise Unavailable(f"{what} socket {path} is not accepting: {exc}") from exc
            await asyncio.sleep(RETRY_INTERVAL)
