"""`make run`: start the Ember server, then walk the platform on a demo VM;
`make clean-demo` (`python -m ember.demo clean`): remove everything the demo made.

The server runs inside a network namespace of its own, `ember-demo`, so the
demo's bridge, NAT rules and VM addresses never meet the host's network; the
API (127.0.0.1:4973) and every port an ingress listens on (the demo's own:
8080; any `ember run -p PORT:...`) are forwarded to the same port of the host's
loopback, where a person expects them. The server's own log goes to a file, so
the narration stays readable. The walk: push a test image, run it with a
volume, exec into it, copy a file in, reach its web server through an ingress,
standby and restore it (timed), and print the commands to repeat. Ctrl-C stops
the server; VMs keep running and are adopted by the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ember.api.auth import load_or_create_secret, mint_token
from ember.client import ApiError, EmberClient
from ember.client.streams import copy_to, run_command
from ember.config import Settings
from ember.testkit import hello_image, push
from ember.testkit.forward import PortMirror, forward

DEMO_NAME = "demo"
VOLUME = "demo-data"
REPOSITORY = "demo/hello"
NAMESPACE = "ember-demo"
INGRESS_PORT = 8080  # the demo's ingress, in the namespace and on the host's loopback
T = TypeVar("T")


def say(message: str) -> None:
    colour = sys.stdout.isatty()
    label = "\033[1;36mdemo:\033[0m" if colour else "demo:"
    print(f"{label} {message}", flush=True)


@dataclass(frozen=True)
class DemoPlace:
    """Where the demo runs: its server's settings and its namespace (tests use their own)."""

    settings: Settings
    namespace: str = NAMESPACE
    ingress_port: int = INGRESS_PORT

    @property
    def url(self) -> str:
        return f"http://{self.settings.listen}"

    @property
    def server_log(self) -> Path:
        return self.settings.data_dir / "demo-server.log"

    @property
    def image(self) -> str:
        return f"{self.settings.listen}/{REPOSITORY}:latest"

    def client(self) -> EmberClient:
        secret = load_or_create_secret(self.settings.data_dir)
        return EmberClient(self.url, mint_token(secret, "demo", 3600))


def timed(action: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    result = action()
    return result, time.monotonic() - started


def answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def namespace_exists(namespace: str) -> bool:
    return Path(f"/run/netns/{namespace}").exists()


def ensure_namespace(namespace: str) -> None:
    if not namespace_exists(namespace):
        subprocess.run(["ip", "netns", "add", namespace], check=True)
    subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)


def start_server(place: DemoPlace) -> subprocess.Popen[bytes]:
    """`ember serve` in the namespace, its output appended to `place.server_log`."""
    ensure_namespace(place.namespace)
    place.server_log.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "EMBER_DATA_DIR": str(place.settings.data_dir),
        "EMBER_LISTEN": place.settings.listen,
    }
    command = ["ip", "netns", "exec", place.namespace, sys.executable, "-m", "ember.cli.main"]
    with place.server_log.open("ab") as log:
        return subprocess.Popen([*command, "serve"], env=env, stdout=log, stderr=log)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        server.wait(30)


def wait_healthy(place: DemoPlace, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"demo: the server exited with status {server.returncode}; its log: "
                     f"{place.server_log}")  # fmt: skip
        if answers(place.url):
            return
        time.sleep(0.2)
    sys.exit(f"demo: the server did not become healthy; its log: {place.server_log}")


@contextlib.contextmanager
def serving(place: DemoPlace) -> Iterator[subprocess.Popen[bytes]]:
    """The server, healthy, with its API and every port an ingress listens on forwarded
    to the same port of the host's loopback; stopped afterwards."""
    server = start_server(place)
    port = place.settings.port
    api_listener = forward(place.namespace, port, port)
    try:
        wait_healthy(place, server)
        with place.client() as api:

            def ingress_ports() -> set[int]:
                return {r["match"]["port"] for i in api.ingresses() for r in i["rules"]}

            mirror = PortMirror(place.namespace, ingress_ports, say).start()
            try:
                yield server
            finally:
                mirror.close()
    finally:
        api_listener.close()
        stop_server(server)


def fetch_through_ingress(place: DemoPlace, host: str) -> str:
    for _ in range(50):
        with contextlib.suppress(httpx.HTTPError):
            url = f"http://127.0.0.1:{place.ingress_port}/"
            answer = httpx.get(url, headers={"Host": host})
            if answer.status_code == 200:
                return answer.text.strip()
        time.sleep(0.2)
    return "(no answer)"


def remove_demo(api: EmberClient, place: DemoPlace) -> list[str]:
    """Delete the demo's ingress, instance, volume and image (those that exist)."""
    removals: list[tuple[str, Callable[[str], None], str]] = [
        ("ingress", api.delete_ingress, DEMO_NAME),
        ("instance", api.delete_instance, DEMO_NAME),
        ("volume", api.delete_volume, VOLUME),
        ("image", api.delete_image, place.image),
    ]
    removed = []
    for kind, remove, name in removals:
        try:
            remove(name)
        except ApiError as exc:
            if exc.status != 404:
                raise
        else:
            removed.append(f"{kind} {name}")
    return removed


def boot(api: EmberClient, image: str) -> dict[str, Any]:
    """Create the demo instance with its volume and wait until it runs."""
    api.create_instance(
        name=DEMO_NAME, image=image, vcpus=1, size="256MB",
        env={"GREETING": "hello from the demo"}, cmd=["/hello", "serve", "8080"],
        volumes=[{"volume_id": VOLUME, "mount_path": "/data"}],
    )  # fmt: skip
    api.wait(DEMO_NAME, "Running", "120s")
    return api.instance(DEMO_NAME)


def run_demo(place: DemoPlace) -> None:
    api = place.client()
    remove_demo(api, place)
    say("pushing a test image (busybox + a tiny web server) into the built-in registry")
    push(hello_image(), place.url, REPOSITORY, "latest", token=api.token)
    for state in api.watch_image(place.image):
        if state["status"] in ("ready", "failed"):
            say(f"image {place.image}: {state['status']}")
    api.create_volume(VOLUME, 1)
    say(f"volume {VOLUME} (1 GiB) created; running the image with it at /data")
    instance, took = timed(lambda: boot(api, place.image))
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
        "match": {"hostname": host, "port": place.ingress_port},
        "target": {"instance": DEMO_NAME, "port": 8080},
    }
    api.create_ingress(DEMO_NAME, [rule])
    answer = fetch_through_ingress(place, host)
    say(f"ingress {host} -> {DEMO_NAME}:8080; curl through it: {answer}")
    _, standby = timed(lambda: api.instance_action(DEMO_NAME, "standby"))
    _, restore = timed(lambda: api.instance_action(DEMO_NAME, "restore"))
    say(f"standby took {standby:.2f}s, restore {restore:.2f}s (a cold boot took {took:.1f}s)")
    say(f"after restore, through the ingress: {fetch_through_ingress(place, host)}")
    port = place.ingress_port
    print(
        "\ndemo: try, in another shell (the CLI finds the server's token when run as root):\n"
        "    .venv/bin/ember ps\n"
        f"    .venv/bin/ember exec -it {DEMO_NAME} /bin/sh\n"
        f"    .venv/bin/ember logs -f {DEMO_NAME}\n"
        f"    curl -H 'Host: {host}' http://127.0.0.1:{port}/\n"
        f"    .venv/bin/ember run -d --name web -p 8081:8080 {place.image} /hello serve 8080\n"
        "    curl http://127.0.0.1:8081/\n"
        f"    .venv/bin/ember standby {DEMO_NAME} && .venv/bin/ember restore {DEMO_NAME}\n"
        f"demo: the server runs in network namespace {place.namespace} (its log: "
        f"{place.server_log}); every port an ingress or `run -p` publishes is forwarded\n"
        "      to the same port on this host's 127.0.0.1 while it runs. Ctrl-C stops it.\n"
        "demo: afterwards `make clean-demo` removes everything the demo made (its VM, volume,\n"
        f"      image and ingress, Caddy, the {place.namespace} namespace with its bridge and "
        "nft table).\n"
    )


def indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.rstrip().splitlines())


def run(place: DemoPlace) -> None:
    if answers(place.url):
        sys.exit(f"demo: something already listens on {place.settings.listen}; stop it first")
    try:
        with serving(place) as server:
            run_demo(place)
            server.wait()
    except ApiError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
    say("server stopped (its VMs keep running); `make clean-demo` removes what the demo made")


def clean(place: DemoPlace) -> list[str]:
    """Remove what the demo made; what was removed. Refuses while a server answers on the
    demo's address, and keeps the namespace while other instances or ingresses use it."""
    if answers(place.url):
        raise SystemExit(f"demo: a server answers on {place.settings.listen}: stop it first "
                         "(Ctrl-C where `make run` runs)")  # fmt: skip
    with serving(place), place.client() as api:
        removed = remove_demo(api, place)
        others = [i["name"] for i in api.instances()]
        others += [f"ingress {i['name']}" for i in api.ingresses()]
    if others:
        raise SystemExit(f"demo: removed {', '.join(removed) or 'nothing'}; kept namespace "
                         f"{place.namespace}: still used by {', '.join(others)} (ember rm -f "
                         "them, then run this again)")  # fmt: skip
    return removed + uninstall_network(place) + [delete_namespace(place.namespace)]


def uninstall_network(place: DemoPlace) -> list[str]:
    """`ember network uninstall` inside the namespace: Caddy, bridge, nft table, leases,
    and forwarding where Ember turned it on (there, not on the host)."""
    env = os.environ | {"EMBER_DATA_DIR": str(place.settings.data_dir),
                        "EMBER_LISTEN": place.settings.listen}  # fmt: skip
    command = ["ip", "netns", "exec", place.namespace, sys.executable, "-m", "ember.cli.main"]
    done = subprocess.run(
        [*command, "network", "uninstall", "--json"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"demo: network uninstall failed: {done.stderr.strip()}")
    removed: list[str] = json.loads(done.stdout)["removed"]
    return removed


def delete_namespace(namespace: str) -> str:
    left = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    if left.stdout.split():
        pids = ", ".join(left.stdout.split())
        raise SystemExit(f"demo: processes still run in namespace {namespace} ({pids}); "
                         "stop them, then run this again")  # fmt: skip
    subprocess.run(["ip", "netns", "del", namespace], check=True)
    return f"namespace {namespace}"


def main() -> None:
    place = DemoPlace(Settings())
    if sys.argv[1:] == ["clean"]:
        removed = clean(place)
        say(f"removed {', '.join(removed)}")
        say(f"left: Ember's data dir {place.settings.data_dir} (its store, keys, image cache)")
    elif sys.argv[1:]:
        sys.exit("usage: python -m ember.demo [clean]")
    else:
        run(place)


if __name__ == "__main__":
    main()
