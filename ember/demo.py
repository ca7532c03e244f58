"""`make run`: start the Ember server, then walk the platform on a demo VM.

The server runs inside a network namespace of its own, `ember-demo`, so the
demo's bridge, NAT rules and VM addresses never meet the host's network; the
API (127.0.0.1:4973) and the ingress (127.0.0.1:8080) are forwarded to the
host's loopback, where a person expects them. The walk: push a test image,
run it with a volume, exec into it, copy a file in, reach its web server
through an ingress, standby and restore it (timed), and print the commands
to repeat. Ctrl-C stops the server; VMs keep running and are adopted by the
next start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ember.api.auth import load_or_create_secret, mint_token
from ember.client import ApiError, EmberClient
from ember.client.streams import copy_to, run_command
from ember.config import Settings
from ember.testkit import hello_image, push
from ember.testkit.forward import forward

DEMO_NAME = "demo"
VOLUME = "demo-data"
NAMESPACE = "ember-demo"
INGRESS_PORT = 8080  # on the host's loopback; Caddy listens on port 80 inside
T = TypeVar("T")


def say(message: str) -> None:
    print(f"\033[1;36mdemo:\033[0m {message}", flush=True)


def timed(action: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    result = action()
    return result, time.monotonic() - started


def ensure_namespace() -> None:
    if not Path(f"/run/netns/{NAMESPACE}").exists():
        subprocess.run(["ip", "netns", "add", NAMESPACE], check=True)
    subprocess.run(["ip", "-n", NAMESPACE, "link", "set", "lo", "up"], check=True)


def wait_healthy(url: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"demo: the server exited with status {server.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    sys.exit("demo: the server did not become healthy")


def fetch_through_ingress(host: str) -> str:
    for _ in range(50):
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.get(f"http://127.0.0.1:{INGRESS_PORT}/", headers={"Host": host})
            if answer.status_code == 200:
                return answer.text.strip()
        time.sleep(0.2)
    return "(no answer)"


def clean_earlier_run(api: EmberClient) -> None:
    removals: list[tuple[Callable[[str], None], str]] = [
        (api.delete_ingress, DEMO_NAME),
        (api.delete_instance, DEMO_NAME),
        (api.delete_volume, VOLUME),
    ]
    for remove, name in removals:
        with contextlib.suppress(ApiError):
            remove(name)


def boot(api: EmberClient, image: str) -> dict[str, Any]:
    """Create the demo instance with its volume and wait until it runs."""
    api.create_instance(
        name=DEMO_NAME, image=image, vcpus=1, size="256MB",
        env={"GREETING": "hello from the demo"}, cmd=["/hello", "serve", "8080"],
        volumes=[{"volume_id": VOLUME, "mount_path": "/data"}],
    )  # fmt: skip
    api.wait(DEMO_NAME, "Running", "120s")
    return api.instance(DEMO_NAME)


def run_demo(settings: Settings, url: str) -> None:
    token = mint_token(load_or_create_secret(settings.data_dir), "demo", 3600)
    api = EmberClient(url, token)
    clean_earlier_run(api)
    say("pushing a test image (busybox + a tiny web server) into the built-in registry")
    push(hello_image(), url, "demo/hello", "latest", token=token)
    image = f"{settings.listen}/demo/hello:latest"
    for state in api.watch_image(image):
        if state["status"] in ("ready", "failed"):
            say(f"image {image}: {state['status']}")
    api.create_volume(VOLUME, 1)
    say(f"volume {VOLUME} (1 GB) created; running the image with it at /data")
    instance, took = timed(lambda: boot(api, image))
    ip = instance["network"].get("ip") or "no network"
    say(f"instance {DEMO_NAME} ({instance['id']}) Running in {took:.1f}s, address {ip}")
    output, code = run_command(api, DEMO_NAME, ["/bin/sh", "-c", "uname -sr; df -h /data"])
    say(f"exec `uname -sr; df -h /data` -> exit {code}:")
    print(indent(output.decode(errors="replace")))
    with tempfile.TemporaryDirectory() as scratch:
        note = Path(scratch) / "note.txt"
        note.write_text("copied in from the host\n")
        copy_to(api, DEMO_NAME, note, "/data/note.txt")
    output, _ = run_command(api, DEMO_NAME, ["cat", "/data/note.txt"])
    say(f"cp note.txt -> /data/note.txt; the guest reads: {output.decode().strip()}")
    host = "demo.localhost"
    rule = {
        "match": {"hostname": host, "port": 80},
        "target": {"instance": DEMO_NAME, "port": 8080},
    }
    api.create_ingress(DEMO_NAME, [rule])
    say(f"ingress {host} -> {DEMO_NAME}:8080; curl through it: {fetch_through_ingress(host)}")
    _, standby = timed(lambda: api.instance_action(DEMO_NAME, "standby"))
    _, restore = timed(lambda: api.instance_action(DEMO_NAME, "restore"))
    say(f"standby took {standby:.2f}s, restore {restore:.2f}s (a cold boot took {took:.1f}s)")
    say(f"after restore, through the ingress: {fetch_through_ingress(host)}")
    print(
        "\ndemo: try, in another shell (the CLI finds the server's token when run as root):\n"
        "    .venv/bin/ember ps\n"
        f"    .venv/bin/ember exec -it {DEMO_NAME} /bin/sh\n"
        f"    .venv/bin/ember logs -f {DEMO_NAME}\n"
        f"    curl -H 'Host: {host}' http://127.0.0.1:{INGRESS_PORT}/\n"
        f"    .venv/bin/ember standby {DEMO_NAME} && .venv/bin/ember restore {DEMO_NAME}\n"
        f"    .venv/bin/ember rm -f {DEMO_NAME}\n"
        f"demo: the server runs in network namespace {NAMESPACE}; Ctrl-C stops it.\n"
    )


def indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.rstrip().splitlines())


@contextlib.contextmanager
def forwarded_ports(settings: Settings) -> Iterator[None]:
    listeners = [
        forward(NAMESPACE, settings.port, settings.port),
        forward(NAMESPACE, INGRESS_PORT, 80),
    ]
    try:
        yield
    finally:
        for listener in listeners:
            listener.close()


def main() -> None:
    settings = Settings()
    url = f"http://{settings.listen}"
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=1)
        sys.exit(f"demo: something already listens on {settings.listen}; stop it first")
    ensure_namespace()
    command = ["ip", "netns", "exec", NAMESPACE, sys.executable, "-m", "ember.cli.main", "serve"]
    server = subprocess.Popen(command, env=os.environ)
    try:
        with forwarded_ports(settings):
            wait_healthy(url, server)
            run_demo(settings, url)
            server.wait()
    except ApiError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(20)


if __name__ == "__main__":
    main()
