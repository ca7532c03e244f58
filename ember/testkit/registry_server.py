"""Run Debian's `docker-registry` (the CNCF distribution registry) on loopback.

An independent, real registry for tests and benchmarks: Ember must pull from
registries it did not write.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ember.testkit.netns import in_netns

BINARY = "docker-registry"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/v2/", timeout=1)
    except httpx.HTTPError:
        return False
    return True


@dataclass
class RegistryServer:
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    htpasswd: Path | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_registry(
    root: Path,
    htpasswd: Path | None = None,
    extra_config: str = "",
    timeout: float = 20,
    netns: str | None = None,
) -> RegistryServer:
    """Start a registry storing under `root`; with `htpasswd`, it requires Basic auth.

    `extra_config` is appended to the YAML config (e.g. an `auth: token:` section);
    with `netns` it listens on that namespace's loopback (`ip netns add`).
    """
    binary = shutil.which(BINARY) or "/usr/bin/docker-registry"
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    auth = f"auth:\n  htpasswd:\n    realm: ember-test\n    path: {htpasswd}\n" if htpasswd else ""
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"{auth}{extra_config}"
    )
    log = (root / "registry.log").open("ab")
    command = [binary, "serve", str(config)]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    process = subprocess.Popen(command, stdout=log, stderr=log)
    server = RegistryServer(root, port, process, htpasswd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(root / 'registry.log').read_text()}")
        if in_netns(netns, _answers, server.url) if netns else _answers(server.url):
            return server
        time.sleep(0.1)
    server.stop()
    raise TimeoutError("docker-registry did not start")
