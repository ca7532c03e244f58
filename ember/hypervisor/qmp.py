"""A small asyncio QMP client: greeting, capabilities negotiation, commands, events.

Chosen over the ``qemu.qmp`` package to avoid a dependency for ~100 lines;
QEMU's wire protocol is newline-delimited JSON.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
from pathlib import Path
from typing import Any

from ember.errors import EmberError, Unavailable
from ember.sockets import close_connection, connect_unix


class QMPError(EmberError):
    """QEMU rejected a command."""


class QMPClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, path: Path, timeout: float = 5.0) -> QMPClient:
        reader, writer = await connect_unix(path, timeout, "QMP")
        client = cls(reader, writer)
        try:
            greeting = json.loads(await asyncio.wait_for(reader.readline(), timeout))
            if "QMP" not in greeting:
                raise Unavailable(f"unexpected QMP greeting: {greeting}")
            client._task = asyncio.create_task(client._read_loop())
            await client.execute("qmp_capabilities", timeout=timeout)
        except (TimeoutError, ValueError, OSError) as exc:
            await client.close()
            raise Unavailable(f"QMP handshake on {path} failed: {exc!r}") from exc
        return client

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        msg_id = str(next(self._ids))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        msg: dict[str, Any] = {"execute": command, "id": msg_id}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._writer.write(json.dumps(msg).encode() + b"\n")
            await self._writer.drain()
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(msg_id, None)
        return _result(command, reply)

    async def execute_with_fd(
        self, command: str, arguments: dict[str, Any], fd: int, timeout: float = 10.0
    ) -> Any:
        """`command` with `fd` attached (SCM_RIGHTS), for `getfd` and `add-fd`: how a file
        Ember opened reaches a QEMU that cannot open paths itself (see jail.py)."""
        msg_id = str(next(self._ids))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        data = json.dumps({"execute": command, "id": msg_id, "arguments": arguments}).encode()
        # The stream's transport cannot send ancillary data: send on a duplicate of its
        # socket. Commands are not pipelined, so nothing of the stream is left unsent.
        transport_socket = self._writer.get_extra_info("socket")
        try:
            with socket.socket(fileno=os.dup(transport_socket.fileno())) as raw:
                socket.send_fds(raw, [data + b"\n"], [fd])
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(msg_id, None)
        return _result(command, reply)

    async def close(self) -> None:
        await close_connection(self._writer, self._task)

    async def __aenter__(self) -> QMPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        try:
            while line := await self._reader.readline():
                msg = json.loads(line)
                if "event" in msg:
                    self.events.put_nowait(msg)
                elif (future := self._pending.get(str(msg.get("id")))) and not future.done():
                    future.set_result(msg)
        except (OSError, ValueError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(Unavailable("QMP connection closed"))


def _result(command: str, reply: dict[str, Any]) -> Any:
    if "error" in reply:
        err = reply["error"]
        raise QMPError(f"QMP {command}: {err.get('class')}: {err.get('desc')}")
    return reply.get("return")
