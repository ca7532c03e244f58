"""Run a real `ember serve` process: for end-to-end tests, benchmarks and the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ember.api.auth import load_or_create_secret, mint_token
from ember.system import DEFAULT_SYSTEM_DIR
from ember.testkit.netns import in_netns
from ember.testkit.registry_server import free_port

# The boot artifacts tests use: EMBER_SYSTEM_DIR, else the shared default. An engineer who
# changes ember/guest points it at a system dir of their own; nothing in a test run may
# then rebuild (or boot) the shared one.
SYSTEM_DIR = Path(os.environ.get("EMBER_SYSTEM_DIR") or DEFAULT_SYSTEM_DIR)


@dataclass
class EmberServer:
    data_dir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    netns: str | None = None  # run inside this network namespace (`ip netns add`)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, ttl: int = 3600) -> str:
        return mint_token(load_or_create_secret(self.data_dir), "test", ttl)

    def start(self, timeout: float = 90) -> EmberServer:
        env = {
            **os.environ,
            "EMBER_DATA_DIR": str(self.data_dir),
            "EMBER_LISTEN": f"127.0.0.1:{self.port}",
            # Boot artifacts are shared: `make setup` prepares them once for every data dir.
            "EMBER_SYSTEM_DIR": str(SYSTEM_DIR),
            # Servers in the host's namespace run without guest networking: a test that
            # needs it runs its server inside a namespace it made (see `netns`).
            "EMBER_NETWORK_ENABLED": "true" if self.netns else "false",
            **self.env,
        }
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir.parent / f"ember-{self.port}.log", "ab")  # noqa: SIM115
        command = [sys.executable, "-m", "ember.cli.main", "serve"]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ember serve exited with {self.process.returncode}")
            if self._healthy():
                return self
            time.sleep(0.1)
        self.stop(signal.SIGKILL)  # never leave a server the test will not stop
        raise TimeoutError(f"ember serve did not become healthy in {timeout:.0f} s")

    def _healthy(self) -> bool:
        def probe() -> bool:
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        return in_netns(self.netns, probe) if self.netns else probe()

    def clean_up(self) -> None:
        """Delete every autoscale configuration, ingress, instance and service group (their
        VMs and Caddy outlive the server), so that a test which failed halfway leaves
        nothing running."""
        if self.process is None or self.process.poll() is not None:
            return

        def delete_all() -> None:
            headers = {"Authorization": f"Bearer {self.token()}"}
            with httpx.Client(base_url=self.url, headers=headers, timeout=60) as client:
                # An autoscaler would make members again while they are deleted.
                for group in client.get("/service-groups").json():
                    client.delete(f"/service-groups/{group['id']}/autoscale")
                for kind in ("ingresses", "instances", "service-groups"):
                    for item in client.get(f"/{kind}").json():
                        client.delete(f"/{kind}/{item['id']}")

        try:
            in_netns(self.netns, delete_all) if self.netns else delete_all()
        except Exception as exc:  # teardown goes on; the test's own failure says more
            print(f"ember test server: clean-up failed: {exc!r}", file=sys.stderr)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
