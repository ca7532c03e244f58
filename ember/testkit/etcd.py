"""Run real etcd members (Debian `etcd-server`) for tests: one on loopback, or a
cluster with one member per network namespace; with `tls`, a member that serves HTTPS
and accepts only clients with a certificate of the test's CA (`certificates`)."""

from __future__ import annotations

import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ember.cluster.etcd import tls_context
from ember.testkit.netns import in_netns
from ember.testkit.registry_server import free_port


def certificates(directory: Path, ip: str = "127.0.0.1") -> Path:
    """A CA (`ca.pem`), a server certificate for `ip` (`server.pem`, `.key`) and a client
    certificate (`client.pem`, `.key`) in `directory`, made with openssl; returned."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=ember test etcd CA")  # fmt: skip
    for name, extensions in (
        # Also clientAuth: etcd 3.4's JSON gateway dials its own gRPC with this certificate.
        ("server", f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (directory / f"{name}.ext").write_text(extensions + "\n")
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
            "-extfile", f"{name}.ext")  # fmt: skip
    return directory


def client_tls(directory: Path) -> ssl.SSLContext | None:
    """The client side of `certificates(directory)`."""
    return tls_context(directory / "ca.pem", directory / "client.pem", directory / "client.key")


@dataclass
class EtcdMember:
    name: str
    data_dir: Path
    ip: str = "127.0.0.1"
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    netns: str | None = None
    tls: Path | None = None  # `certificates`' directory: HTTPS, client certificates required
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{self.peer_port}"

    def start(self, initial_cluster: str | None = None) -> EtcdMember:
        command = [
            "etcd", "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
        ]  # fmt: skip
        if self.tls:
            tls = self.tls
            command += ["--cert-file", str(tls / "server.pem"),
                        "--key-file", str(tls / "server.key"),
                        "--client-cert-auth", "--trusted-ca-file", str(tls / "ca.pem")]  # fmt: skip
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir.parent / f"etcd-{self.name}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        return self

    def healthy(self) -> bool:
        def probe() -> bool:
            try:
                verify = client_tls(self.tls) if self.tls else None
                answer = httpx.get(
                    f"{self.client_url}/health", timeout=1, verify=verify or True
                ).json()
                return bool(answer["health"] == "true")
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        return in_netns(self.netns, probe) if self.netns else probe()

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd {self.name} did not become healthy")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_cluster(members: list[EtcdMember]) -> list[EtcdMember]:
    """Start `members` as one cluster and wait until every one is healthy."""
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for member in members:
        member.start(initial)
    for member in members:
        member.wait_healthy()
    return members
