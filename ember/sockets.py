"""Connecting to the Unix sockets QEMU serves (QMP, the agent port)."""

from __future__ import annotations

import asyncio
import contextlib
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


async def close_connection(writer: asyncio.StreamWriter, reader: asyncio.Task[None] | None) -> None:
    """Stop the task reading the connection, then close it (a peer already gone is fine)."""
    if reader is not None:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
