"""The Caddy process: started in its own session, adopted again after an Ember restart.

Caddy starts from a bootstrap config that only opens its admin API (a Unix socket)
and names its storage; every real config arrives through `POST /load`, so a bad
config, a port already taken or a crash at start all come back the same way: as
an error of the load, with Caddy still running its previous config.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from ember.errors import Conflict, Unavailable
from ember.ingress.caddy_config import JSON

log = logging.getLogger(__name__)
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
LOAD_TIMEOUT = 60.0  # a load may wait on binding listeners and loading certificates


class CaddyError(Unavailable):
    code = "ingress_unavailable"


class CaddyDaemon:
    """One Caddy for one data dir: its files live in `state_dir`.

    `command_prefix` runs Caddy under another program that execs it (tests use
    `ip netns exec NAME` so Caddy lives in their network namespace).
    """

    def __init__(
        self,
        binary: Path,
        state_dir: Path,
        admin_socket: Path,
        *,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.state_dir = state_dir
        self.admin_socket = admin_socket
        self.command_prefix = list(command_prefix)
        self.bootstrap_file = state_dir / "bootstrap.json"
        self.config_file = state_dir / "config.json"  # the last config loaded, for people
        self.pid_file = state_dir / "caddy.pid"
        self.log_file = state_dir / "caddy.log"
        self._child: subprocess.Popen[bytes] | None = None

    # ---- process ----------------------------------------------------------------------

    def running_pid(self) -> int | None:
        """The pid of our Caddy if it runs: the pid file's process, with our command line."""
        self._reap()
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        # A recycled pid runs something else; a zombie is dead. Both are not ours.
        state = stat.rsplit(")", 1)[1].split()[0]
        ours = str(self.binary).encode() in cmdline and str(self.bootstrap_file).encode() in cmdline
        return pid if ours and state != "Z" else None

    async def ensure_running(self, bootstrap: JSON) -> int:
        """Adopt the running Caddy or start one; return its pid once its admin API answers."""
        pid = self.running_pid()
        if pid is not None and await self._admin_ready():
            return pid
        if pid is not None:  # alive but deaf: replace it rather than wait on it forever
            await self.stop()
        return await self._start(bootstrap)

    async def _start(self, bootstrap: JSON) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.admin_socket.parent.mkdir(parents=True, exist_ok=True)
        self.admin_socket.unlink(missing_ok=True)  # a dead Caddy's socket blocks the bind
        _write_private(self.bootstrap_file, bootstrap)
        command = [
            *self.command_prefix,
            str(self.binary),
            "run",
            "--config",
            str(self.bootstrap_file),
        ]
        with open(self.log_file, "ab") as out:
            # Its own session: Caddy outlives Ember (and its signals) by design.
            self._child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                cwd=self.state_dir,
            )
        self.pid_file.write_text(f"{self._child.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._child.poll() is not None:
                raise CaddyError(
                    f"caddy exited at start ({self._child.returncode}): {self.log_tail()}"
                )
            if await self._admin_ready():
                log.info("caddy started (pid %d)", self._child.pid)
                return self._child.pid
            await asyncio.sleep(0.05)
        await self.stop()
        raise CaddyError(f"caddy did not open its admin socket in {START_TIMEOUT:.0f}s")

    async def stop(self) -> None:
        """Stop our Caddy (TERM, then KILL) and remove its pid file and socket."""
        pid = self.running_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while self.running_pid() == pid and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self.running_pid() == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while self.running_pid() == pid:
                    await asyncio.sleep(0.02)
            log.info("caddy stopped (pid %d)", pid)
        self._reap()
        self.pid_file.unlink(missing_ok=True)
        self.admin_socket.unlink(missing_ok=True)

    def _reap(self) -> None:
        """Collect our own child once it exited (an adopted Caddy is not our child)."""
        if self._child is not None and self._child.poll() is not None:
            self._child = None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    # ---- admin API --------------------------------------------------------------------

    def _client(self, timeout: float) -> httpx.AsyncClient:
        # No TLS on our own socket: verify=False spares loading the CA bundle, which
        # costs ~95 ms per client here (measured), on every admin call.
        transport = httpx.AsyncHTTPTransport(uds=str(self.admin_socket), verify=False)
        # Caddy's admin API checks Host against its listen address; for a socket that is "".
        return httpx.AsyncClient(
            transport=transport, base_url="http://localhost", timeout=timeout,
            headers={"Host": ""},
        )  # fmt: skip

    async def _admin_ready(self) -> bool:
        if not self.admin_socket.exists():
            return False
        try:
            async with self._client(2.0) as client:
                return (await client.get("/config/admin")).status_code == 200
        except httpx.HTTPError:
            return False

    async def load(self, config: JSON) -> None:
        """Replace Caddy's whole config; on an error Caddy keeps the previous one."""
        try:
            async with self._client(LOAD_TIMEOUT) as client:
                response = await client.post("/load", json=config)
        except httpx.HTTPError as exc:
            raise CaddyError(f"caddy admin API unreachable: {exc}") from exc
        if response.status_code != 200:
            raise _load_error(response)
        _write_private(self.config_file, config)

    async def upstream_requests(self) -> dict[str, int]:
        """In-flight requests per upstream address (`GET /reverse_proxy/upstreams`); the
        counts live as long as Caddy does, across config loads."""
        try:
            async with self._client(5.0) as client:
                response = await client.get("/reverse_proxy/upstreams")
        except httpx.HTTPError as exc:
            raise CaddyError(f"caddy admin API unreachable: {exc}") from exc
        if response.status_code != 200:
            raise CaddyError(f"caddy admin API: {response.status_code} {response.text.strip()}")
        return {u["address"]: int(u["num_requests"]) for u in response.json() or []}


def _load_error(response: httpx.Response) -> CaddyError | Conflict:
    try:
        message = str(response.json().get("error", response.text))
    except ValueError:
        message = response.text
    if "address already in use" in message:
        return Conflict(f"ingress: a listen port is taken by another program: {message}")
    if "permission denied" in message and "bind" in message:
        return Conflict(f"ingress: a listen port cannot be bound: {message}")
    return CaddyError(f"caddy refused the config: {message}")


def _write_private(path: Path, config: JSON) -> None:
    """Configs hold request-header secrets: owner-only, written whole."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(config, out, indent=1)
    tmp.replace(path)
