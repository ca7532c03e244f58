"""Host side of the agent protocol: an asyncio client over QEMU's agent socket.

QEMU listens on a Unix socket (``-chardev socket,server=on,wait=off``) and
relays bytes to the guest's virtio-serial port. The client can attach at any
time, including to a VM started by an earlier Ember process: every connection
starts with HELLO carrying a random nonce, and everything before the matching
HELLO_ACK (stale bytes of an earlier connection) is discarded. The ACK carries
the agent's status, so a re-attached host learns "running" or "exited + code"
without having seen the events.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from ember.errors import EmberError, InvalidArgument, Unavailable
from ember.guest.config import GuestNetwork
from ember.guest.protocol import (
    CONTROL_CHANNEL,
    HEADER_SIZE,
    MAX_PAYLOAD,
    Decoder,
    Flags,
    Frame,
    MsgType,
    encode,
    encode_record,
)
from ember.sockets import close_connection, connect_unix

log = logging.getLogger(__name__)

# With no HELLO_ACK by then, assume the agent sits mid-frame of a dead
# connection: pad the frame out with zeros and say HELLO again.
RESYNC_AFTER = 15.0


class AgentStatus(BaseModel):
    state: Literal["starting", "running", "exited"]
    pid: int = 0
    exit_code: int | None = None
    signal: int | None = None
    message: str | None = None
    init_mode: bool = False


class AgentDisconnected(Unavailable):
    """The agent connection closed (usually: the VM stopped)."""


class AgentError(EmberError):
    """The agent refused a request."""


class ExecResult(BaseModel):
    exit_code: int
    signal: int = 0
    message: str


WINDOW = 256 * 1024  # initial per-channel credit, both directions (agent.c WINDOW)
_CREDIT_BATCH = 64 * 1024


class ExecSession:
    """One process started by ``AgentClient.exec``; its stdio is channel-multiplexed."""

    def __init__(self, client: AgentClient, channel: int) -> None:
        self._client = client
        self.channel = channel
        self.pid = 0
        self.result: ExecResult | None = None
        self._frames: collections.deque[Frame | None] = collections.deque()
        self._arrived = asyncio.Event()
        self._send_credit = WINDOW
        self._credit_changed = asyncio.Event()
        self._consumed = 0

    async def read(self) -> tuple[str, bytes] | None:
        """Next ("stdout" | "stderr", bytes); None once the process exited and output ended."""
        while self.result is None:
            frame = await self._next_frame()
            if frame is None:
                raise AgentDisconnected("agent connection closed during exec")
            if frame.type in (MsgType.STDOUT, MsgType.STDERR):
                await self._grant(len(frame.payload))
                return ("stdout" if frame.type == MsgType.STDOUT else "stderr", frame.payload)
            if frame.type == MsgType.EXEC_EXIT:
                self.result = ExecResult.model_validate(frame.json())
            elif frame.type == MsgType.ERROR:
                raise AgentError(str(frame.json().get("message", "exec failed")))
        return None

    async def read_merged(self, limit: int = 256 * 1024) -> bytes | None:
        """stdout and stderr as one stream: the next chunk joined with whatever output
        has already arrived behind it, up to about ``limit`` bytes; None at the end.

        A relay that forwards one message per agent frame pays its per-message cost
        every 32 KiB; joining what is queued pays it once per burst."""
        first = await self.read()
        if first is None:
            return None
        merged = bytearray(first[1])
        while len(merged) < limit and self._frames:
            frame = self._frames[0]  # only output frames are taken here; read() handles the rest
            if frame is None or frame.type not in (MsgType.STDOUT, MsgType.STDERR):
                break
            self._frames.popleft()
            await self._grant(len(frame.payload))
            merged += frame.payload
        return bytes(merged)

    async def wait(self) -> tuple[ExecResult, bytes, bytes]:
        """Drain the output; returns (result, stdout, stderr)."""
        out, err = bytearray(), bytearray()
        while (chunk := await self.read()) is not None:
            (out if chunk[0] == "stdout" else err).extend(chunk[1])
        assert self.result is not None
        return self.result, bytes(out), bytes(err)

    async def write(self, data: bytes) -> None:
        """Send stdin, waiting for the agent's credit when its window is full."""
        view = memoryview(data)
        while view:
            while self._send_credit <= 0:
                self._credit_changed.clear()
                await self._credit_changed.wait()
            n = min(len(view), self._send_credit, 32 * 1024)
            self._send_credit -= n
            await self._client._send(Frame(MsgType.STDIN, self.channel, bytes(view[:n])))
            view = view[n:]

    async def close_stdin(self) -> None:
        await self._client._send(Frame(MsgType.STDIN, self.channel, b"", Flags.EOF))

    async def resize(self, rows: int, cols: int) -> None:
        record = encode_record({"rows": rows, "cols": cols})
        await self._client._send(Frame(MsgType.RESIZE, self.channel, record))

    async def signal(self, signum: int) -> None:
        await self._client._request(
            MsgType.SIGNAL, encode_record({"signal": signum, "channel": self.channel}), 5.0
        )

    async def _grant(self, n: int) -> None:
        self._consumed += n
        if self._consumed >= _CREDIT_BATCH:
            record = encode_record({"credit": self._consumed})
            self._consumed = 0
            await self._client._send(Frame(MsgType.CREDIT, self.channel, record))

    def _deliver(self, frame: Frame | None) -> None:
        if frame is not None and frame.type == MsgType.CREDIT:
            fields = dict(kv.split("=", 1) for kv in frame.payload.decode().split("\0") if kv)
            self._send_credit += int(fields.get("credit", 0))
            self._credit_changed.set()
            return
        self._frames.append(frame)
        self._arrived.set()

    async def _next_frame(self) -> Frame | None:
        while not self._frames:
            self._arrived.clear()
            await self._arrived.wait()
        return self._frames.popleft()


class AgentClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._nonce = secrets.token_hex(8)
        self._synced = asyncio.Event()
        self._status_changed = asyncio.Event()
        self._status: AgentStatus | None = None
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._channels = itertools.count(1)
        self._sessions: dict[int, ExecSession] = {}
        self._closed = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    @classmethod
    async def connect(cls, path: Path, timeout: float = 10.0) -> AgentClient:
        """Attach to the agent socket, retrying until QEMU has created it."""
        reader, writer = await connect_unix(path, timeout, "agent")
        client = cls(reader, writer)
        await client._send(Frame(MsgType.HELLO, CONTROL_CHANNEL, client._nonce.encode()))
        return client

    @property
    def status(self) -> AgentStatus | None:
        """Last status learned from the agent (None before the HELLO_ACK)."""
        return self._status

    @property
    def connected(self) -> bool:
        return not self._closed.is_set()

    async def wait_ready(self, timeout: float | None = None) -> AgentStatus:
        """Wait until the workload has started (or already exited: check ``state``)."""
        return await self._wait_for(lambda s: s.state != "starting", timeout)

    async def wait_exit(self, timeout: float | None = None) -> AgentStatus:
        return await self._wait_for(lambda s: s.state == "exited", timeout)

    async def request_status(self, timeout: float = 5.0) -> AgentStatus:
        reply = await self._request(MsgType.STATUS, b"", timeout)
        return self._set_status(AgentStatus.model_validate(reply.json()))

    async def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time in seconds."""
        started = time.monotonic()
        await self._request(MsgType.PING, b"ping", timeout)
        return time.monotonic() - started

    async def signal(self, signum: int, timeout: float = 5.0, *, group: bool = False) -> None:
        """Send a signal to the workload (SIGTERM = graceful stop); `group`: to its whole
        process group (SIGSTOP before a template is saved)."""
        fields = {"signal": int(signum)} | ({"group": 1} if group else {})
        await self._request(MsgType.SIGNAL, encode_record(fields), timeout)

    async def set_time(self, when: float | None = None, timeout: float = 5.0) -> None:
        """Set the guest's wall clock (default: the host's now), which lags after a restore."""
        now = time.time_ns() if when is None else int(when * 1e9)
        record = encode_record({"sec": now // 1_000_000_000, "nsec": now % 1_000_000_000})
        await self._request(MsgType.SET_TIME, record, timeout)

    async def set_network(
        self, network: GuestNetwork, hostname: str | None = None, timeout: float = 5.0
    ) -> None:
        """Give eth0 this MAC, address, default route and resolvers (and the guest this
        hostname): a fork restored from another VM's memory starts with that VM's."""
        fields: dict[str, str | int | list[str]] = {"iface": "eth0", "ip": network.ip,
                                                     "prefix": network.prefix}  # fmt: skip
        if network.mac:
            fields["mac"] = network.mac
        if network.gateway:
            fields["gateway"] = network.gateway
        if network.dns:
            fields["dns"] = list(network.dns)
        if hostname:
            fields["hostname"] = hostname
        await self._request(MsgType.SET_NETWORK, encode_record(fields), timeout)

    async def set_identity(
        self, hostname: str, *, resume_workload: bool = False, timeout: float = 5.0
    ) -> None:
        """Make a clone unique: its kernel's CRNG reseeded from 64 fresh bytes of the host's
        entropy, its own machine-id and hostname; then, with `resume_workload`, the
        workload's process group (stopped before the save) goes on."""
        fields = {"entropy": secrets.token_hex(64), "machine_id": secrets.token_hex(16),
                  "hostname": hostname}  # fmt: skip
        if resume_workload:
            fields["cont"] = "1"
        await self._request(MsgType.SET_IDENTITY, encode_record(fields), timeout)

    async def mount_volume(
        self, serial: str, path: str, *, readonly: bool, timeout: float = 30.0
    ) -> None:
        """Mount the ext4 disk with virtio serial `serial` at `path` (created if missing);
        the agent first waits for the disk's new capacity to reach the guest."""
        record = encode_record({"serial": serial, "path": path, "ro": int(readonly)})
        await self._request(MsgType.MOUNT, record, timeout)

    async def unmount_volume(self, path: str, timeout: float = 30.0) -> None:
        """Unmount `path` (not lazily: AgentError "...: Device or resource busy" if in use)."""
        await self._request(MsgType.UNMOUNT, encode_record({"path": path}), timeout)

    async def exec(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        tty: bool = False,
        rows: int = 24,
        cols: int = 80,
        timeout: float = 10.0,
    ) -> ExecSession:
        """Start a process in the guest; exec failures come back as ``session.result``.
        Unavailable when the agent does not answer within ``timeout``."""
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            raise Unavailable(f"the guest agent did not answer within {timeout:g} s") from None
        fields: dict[str, str | int | list[str]] = {
            "arg": argv,
            "env": [f"{k}={v}" for k, v in (env or {}).items()],
            "tty": int(tty),
            "rows": rows,
            "cols": cols,
        }
        fields |= {k: v for k, v in (("cwd", cwd), ("user", user)) if v is not None}
        try:  # before registering a session: a refused request must leave none behind
            record = encode_record(fields)
        except ValueError as exc:
            raise InvalidArgument(f"invalid exec request: {exc}") from exc
        session = ExecSession(self, next(self._channels))
        self._sessions[session.channel] = session
        try:
            await self._send(Frame(MsgType.EXEC_START, session.channel, record))
            try:
                first = await asyncio.wait_for(session._next_frame(), timeout)
            except TimeoutError:
                raise Unavailable(
                    f"the guest agent did not start the command within {timeout:g} s"
                ) from None
            if first is None:
                raise AgentDisconnected("agent connection closed during exec")
            if first.type == MsgType.ERROR:
                raise AgentError(str(first.json().get("message", "exec failed")))
        except BaseException:
            self._sessions.pop(session.channel, None)
            raise
        if first.type == MsgType.EXEC_EXIT:
            session.result = ExecResult.model_validate(first.json())
        else:
            session.pid = int(first.json().get("pid", 0))
        return session

    async def stat(self, path: str, follow: bool = False, timeout: float = 5.0) -> dict[str, Any]:
        """lstat (or stat) in the guest: mode, size, uid, gid, mtime, link_target."""
        record = encode_record({"path": path, "follow": int(follow)})
        return (await self._request(MsgType.STAT, record, timeout)).json()

    async def close(self) -> None:
        await close_connection(self._writer, self._task)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals --

    async def _send(self, frame: Frame) -> None:
        if self._closed.is_set():
            raise AgentDisconnected("agent connection is closed")
        self._writer.write(encode(frame))
        await self._writer.drain()

    async def _request(self, mtype: MsgType, payload: bytes, timeout: float) -> Frame:
        await asyncio.wait_for(self._synced.wait(), timeout)
        channel = next(self._channels)
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[channel] = future
        try:
            await self._send(Frame(mtype, channel, payload))
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(channel, None)
        if reply.type == MsgType.ERROR:
            raise AgentError(str(reply.json().get("message", "agent error")))
        return reply

    async def _wait_for(
        self, done: Callable[[AgentStatus], bool], timeout: float | None
    ) -> AgentStatus:
        async def wait() -> AgentStatus:
            while True:
                if self._status is not None and done(self._status):
                    return self._status
                if self._closed.is_set():
                    raise AgentDisconnected("agent connection closed before the expected event")
                self._status_changed.clear()
                closed = asyncio.create_task(self._closed.wait())
                changed = asyncio.create_task(self._status_changed.wait())
                _, pending = await asyncio.wait(
                    {closed, changed}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()

        return await asyncio.wait_for(wait(), timeout)

    def _set_status(self, status: AgentStatus) -> AgentStatus:
        # An exit is final: a late "running" reply must not undo it.
        if self._status is None or self._status.state != "exited":
            self._status = status
            self._status_changed.set()
        return self._status

    async def _run(self) -> None:
        decoder = Decoder()
        resync = asyncio.get_running_loop().call_later(RESYNC_AFTER, self._resync)
        try:
            while data := await self._reader.read(65536):
                for frame in decoder.feed(data):
                    try:
                        self._dispatch(frame)
                    except ValueError as exc:  # bad JSON or status: skip the frame
                        log.warning("ignoring malformed agent frame %#x: %s", frame.type, exc)
                if self._synced.is_set():
                    resync.cancel()
        except (ConnectionError, OSError) as exc:
            log.debug("agent connection lost: %s", exc)
        finally:
            resync.cancel()
            self._closed.set()
            self._status_changed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(AgentDisconnected("agent connection closed"))
            for session in self._sessions.values():
                session._deliver(None)

    def _resync(self) -> None:
        if self._synced.is_set() or self._closed.is_set():
            return
        log.info("no HELLO_ACK from agent yet; padding a possibly torn frame and retrying")
        self._writer.write(b"\0" * (HEADER_SIZE + MAX_PAYLOAD))
        self._writer.write(encode(Frame(MsgType.HELLO, CONTROL_CHANNEL, self._nonce.encode())))

    def _dispatch(self, frame: Frame) -> None:
        if not self._synced.is_set():
            # Stale bytes from an earlier connection may precede our ACK.
            if frame.type == MsgType.HELLO_ACK and self._nonce.encode() in frame.payload:
                self._synced.set()
                self._set_status(AgentStatus.model_validate(frame.json()["status"]))
            return
        if (session := self._sessions.get(frame.channel)) is not None:
            session._deliver(frame)
            if frame.type == MsgType.EXEC_EXIT:
                self._sessions.pop(frame.channel, None)
            return
        if frame.channel != CONTROL_CHANNEL:
            future = self._pending.get(frame.channel)
            if future is not None and not future.done():
                future.set_result(frame)
            return
        if frame.type in (MsgType.READY, MsgType.EXIT, MsgType.STATUS):
            self._set_status(AgentStatus.model_validate(frame.json()))
        elif frame.type == MsgType.ERROR:
            log.warning("agent error: %s", frame.json().get("message"))
