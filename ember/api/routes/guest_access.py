"""Reaching inside a running VM: exec and copy (WebSockets), stat and stats.

The WebSocket protocols are the official client's (`hypeman/lib/exec.py`,
`hypeman/lib/cp.py`). Output is relayed one chunk at a time: the agent only
sends more when we have read (credit-based flow control), and we only read
when the WebSocket took the previous chunk, so a slow client slows the guest
process down instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, WebSocket, WebSocketDisconnect, status
from pydantic import BaseModel, Field, ValidationError, field_validator

from ember.api.auth import bearer_token, verify_token
from ember.api.deps import ServicesDep
from ember.api.errors import error_responses, refuse_websocket
from ember.api.schemas.guest import InstanceStats, PathInfo
from ember.api.services import Services
from ember.errors import EmberError, InvalidArgument, Unavailable
from ember.guest.client import AgentClient, AgentDisconnected, AgentError, ExecSession
from ember.guest.copy import Header, cp_in_argv, cp_out_argv, read_tree
from ember.validation import validate_c_string, validate_env

router = APIRouter(prefix="/instances", tags=["guest"])
sockets = APIRouter(prefix="/instances")  # authenticates itself: no HTTP dependencies
InstanceRef = Annotated[str, Path(alias="id", description="Instance id, name or unique id prefix")]
TIMED_OUT = 124  # what coreutils' `timeout` answers, for the same situation
CHUNK = 32 * 1024
AGENT_ANSWER_SECONDS = 10.0  # how long an exec waits for a connected agent to answer


class ExecRequest(BaseModel):
    command: list[str] = Field(min_length=1)
    tty: bool = False
    env: dict[str, str] | None = None
    cwd: str | None = None
    timeout: int | None = Field(default=None, ge=0)
    wait_for_agent: int | None = Field(default=None, ge=0)
    rows: int | None = Field(default=None, gt=0)
    cols: int | None = Field(default=None, gt=0)

    # InvalidArgument (not ValueError) passes through pydantic: the message is the same
    # one instance create gives for the same environment.
    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        return None if env is None else validate_env(env)

    @field_validator("command")
    @classmethod
    def _command(cls, command: list[str]) -> list[str]:
        return [validate_c_string(arg, field=f"command[{i}]") for i, arg in enumerate(command)]

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, cwd: str | None) -> str | None:
        return None if cwd is None else validate_c_string(cwd, field="cwd")


class CopyRequest(BaseModel):
    direction: str = Field(pattern="^(to|from)$")
    guest_path: str = Field(min_length=1)
    is_dir: bool = False
    mode: int = Field(default=0, ge=0, le=0o7777)
    uid: int | None = None
    gid: int | None = None
    follow_links: bool = False


# ---- plain HTTP ------------------------------------------------------------------------


@router.get(
    "/{id}/stat",
    response_model=PathInfo,
    summary="Stat a path in the guest",
    responses=error_responses(400, 404, 409, 503),
)
async def stat_path(
    ref: InstanceRef,
    svc: ServicesDep,
    path: Annotated[str, Query(min_length=1)],
    follow_links: bool = False,
) -> PathInfo:
    _, agent = svc.instances.agent(ref)
    try:
        info = await agent.stat(path, follow=follow_links)
    except AgentError as exc:
        missing = "No such file or directory" in exc.message
        return PathInfo(exists=False, error=None if missing else exc.message)
    kind = int(info["mode"]) & 0o170000
    is_link = kind == 0o120000
    return PathInfo(
        exists=True,
        is_dir=kind == 0o040000,
        is_file=kind == 0o100000,
        is_symlink=is_link if not follow_links else None,
        link_target=info.get("link_target") if is_link else None,
        mode=int(info["mode"]) & 0o7777,
        size=int(info["size"]),
    )


@router.get(
    "/{id}/stats",
    response_model=InstanceStats,
    summary="Resource use of the VM",
    responses=error_responses(400, 404),
)
async def instance_stats(ref: InstanceRef, svc: ServicesDep) -> InstanceStats:
    record, usage = svc.instances.stats(ref)
    rx, tx = await svc.instances.network_counters(record)
    return InstanceStats(
        instance_id=record.id,
        instance_name=record.name,
        allocated_memory_bytes=record.memory_bytes,
        allocated_vcpus=record.vcpus,
        cpu_seconds=usage.cpu_seconds,
        memory_rss_bytes=usage.rss_bytes,
        memory_vms_bytes=usage.vms_bytes,
        memory_utilization_ratio=round(usage.rss_bytes / record.memory_bytes, 4),
        network_rx_bytes=rx,
        network_tx_bytes=tx,
    )


# ---- WebSockets ------------------------------------------------------------------------


async def _accept(websocket: WebSocket, ref: str) -> Services | None:
    """Refuse the upgrade with a plain HTTP error (as Hypeman does) for a bad token or an
    instance whose guest cannot be reached; otherwise accept the socket."""
    svc: Services = websocket.app.state.services
    try:
        if not svc.settings.auth_disabled:
            verify_token(svc.jwt_secret, bearer_token(websocket.headers.get("authorization")))
        with contextlib.suppress(Unavailable):  # not connected yet: wait_for_agent may cover it
            svc.instances.agent(ref)
    except EmberError as exc:
        await refuse_websocket(websocket, exc.status, exc.code, exc.message)
        return None
    await websocket.accept()
    return svc


async def _agent(svc: Services, ref: str, wait_seconds: int | None) -> AgentClient:
    """The instance's agent, waiting up to `wait_seconds` for it to come up."""
    return (await svc.instances.wait_for_agent(ref, wait_seconds or 0))[1]


async def _first_json(websocket: WebSocket, svc: Services) -> dict[str, Any]:
    """The request every exec and cp socket starts with. A client that sends nothing is
    told so in the close frame (1008, policy violation) and let go."""
    wait = svc.settings.websocket_first_message_seconds
    try:
        async with asyncio.timeout(wait):
            text = await websocket.receive_text()
    except TimeoutError:
        reason = f"no request within {wait:g} s: the first message must be the JSON request"
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason=reason)
        raise WebSocketDisconnect(status.WS_1008_POLICY_VIOLATION, reason) from None
    try:
        value = json.loads(text)
    except (ValueError, KeyError) as exc:
        raise InvalidArgument("the first message must be a JSON request") from exc
    if not isinstance(value, dict):
        raise InvalidArgument("the first message must be a JSON object")
    return value


def _validation_message(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"


@sockets.websocket("/{id}/exec")
async def exec_socket(websocket: WebSocket, ref: InstanceRef) -> None:
    svc = await _accept(websocket, ref)
    if svc is None:
        return
    try:
        request = ExecRequest.model_validate(await _first_json(websocket, svc))
        agent = await _agent(svc, ref, request.wait_for_agent)
        # A just-connected agent answers once it has synced: wait_for_agent covers that too.
        session = await agent.exec(
            request.command, env=request.env, cwd=request.cwd, tty=request.tty,
            rows=request.rows or 24, cols=request.cols or 80,
            timeout=max(AGENT_ANSWER_SECONDS, request.wait_for_agent or 0),
        )  # fmt: skip
        if session.result is not None:  # it never started: say why, as a shell would
            await websocket.send_bytes(f"{session.result.message}\r\n".encode())
        exit_code = await _relay_exec(websocket, session, request.timeout)
        await websocket.send_text(json.dumps({"exitCode": exit_code}))
        await websocket.close()
    except WebSocketDisconnect:
        return
    except ValidationError as exc:
        await _fail_exec(websocket, _validation_message(exc))
    except TimeoutError:
        await _fail_exec(websocket, f"the guest agent of instance {ref!r} did not answer (the "
                         "VM may still be booting: wait_for_agent waits longer)")  # fmt: skip
    except AgentDisconnected as exc:  # usually: the program exited and the VM powers off
        exited = await svc.instances.exited(ref)
        await _fail_exec(websocket, exited.message if exited else exc.message)
    except EmberError as exc:
        await _fail_exec(websocket, exc.message)


async def _fail_exec(websocket: WebSocket, message: str) -> None:
    """After the upgrade, a failure is told the way the client shows it: as output, then
    exit code 127 (as Hypeman does)."""
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.send_bytes(f"Error: {message}\r\n".encode())
        await websocket.send_text(json.dumps({"exitCode": 127}))
        await websocket.close()


async def _relay_exec(websocket: WebSocket, session: ExecSession, timeout: int | None) -> int:
    """Pump output to the socket and input to the process until it exits; its exit code."""
    stdin = asyncio.create_task(_pump_stdin(websocket, session))
    try:
        async with asyncio.timeout(timeout or None):
            while (data := await session.read_merged()) is not None:
                await websocket.send_bytes(data)
    except TimeoutError:
        with contextlib.suppress(EmberError):
            await session.signal(signal.SIGKILL)
        return TIMED_OUT
    finally:
        stdin.cancel()
    assert session.result is not None
    return session.result.exit_code


async def _pump_stdin(websocket: WebSocket, session: ExecSession) -> None:
    """Binary frames are stdin; text frames are resizes, or (an Ember extension: the
    official protocol has no way to end stdin) `{"eof": true}`, which closes the process's
    stdin so `echo x | ember exec -i NAME cat` ends. A client that leaves kills it."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("bytes"):
                await session.write(message["bytes"])
            elif message.get("text"):
                control = json.loads(message["text"])
                if control.get("eof") is True:
                    await session.close_stdin()
                resize = control.get("resize") or {}
                if resize.get("rows") and resize.get("cols"):
                    await session.resize(int(resize["rows"]), int(resize["cols"]))
    except (WebSocketDisconnect, ValueError, EmberError):
        pass
    if session.result is None:
        with contextlib.suppress(EmberError):
            await session.signal(signal.SIGKILL)


@sockets.websocket("/{id}/cp")
async def copy_socket(websocket: WebSocket, ref: InstanceRef) -> None:
    svc = await _accept(websocket, ref)
    if svc is None:
        return
    try:
        request = CopyRequest.model_validate(await _first_json(websocket, svc))
        agent = await _agent(svc, ref, None)
        if request.direction == "to":
            await _copy_to(websocket, agent, request)
        else:
            await _copy_from(websocket, agent, request)
        await websocket.close()
    except WebSocketDisconnect:
        return
    except ValidationError as exc:
        await _fail_copy(websocket, _validation_message(exc))
    except EmberError as exc:
        await _fail_copy(websocket, exc.message)


async def _fail_copy(websocket: WebSocket, message: str) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.send_text(json.dumps({"type": "error", "message": message}))
        await websocket.close()


async def _copy_to(websocket: WebSocket, agent: AgentClient, request: CopyRequest) -> None:
    mode = request.mode or (0o755 if request.is_dir else 0o644)
    session = await agent.exec(
        cp_in_argv(request.guest_path, mode, request.uid, request.gid, request.is_dir)
    )
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect()
        if message.get("bytes"):
            await session.write(message["bytes"])
        elif message.get("text") and json.loads(message["text"]).get("type") == "end":
            break
    await session.close_stdin()
    result, out, err = await session.wait()
    if result.exit_code != 0:
        error = err.decode(errors="replace").strip() or result.message
        await websocket.send_text(json.dumps({"type": "result", "success": False, "error": error}))
        return
    written = int(json.loads(out).get("bytes_written", 0))
    await websocket.send_text(
        json.dumps({"type": "result", "success": True, "bytes_written": written})
    )


async def _copy_from(websocket: WebSocket, agent: AgentClient, request: CopyRequest) -> None:
    session = await agent.exec(cp_out_argv(request.guest_path, request.follow_links))
    started = False
    async for item in read_tree(session):
        if isinstance(item, Header):
            if started:
                await websocket.send_text(json.dumps({"type": "end", "final": False}))
            await websocket.send_text(json.dumps({"type": "header", **item.fields}))
            started = True
        else:
            for offset in range(0, len(item), CHUNK):
                await websocket.send_bytes(item[offset : offset + CHUNK])
    await websocket.send_text(json.dumps({"type": "end", "final": True}))
