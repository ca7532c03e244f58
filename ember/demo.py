"""`make run`: start the Ember server, then show it working on a demo VM.

The server runs in the foreground of this process group (its log on this
terminal); the demo pushes a test image into the built-in registry, boots it
as the instance `demo`, and prints its output and what to try next. Ctrl-C
stops the server; VMs keep running and are adopted by the next start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import httpx

from ember.api.auth import load_or_create_secret, mint_token
from ember.client import ApiError, EmberClient
from ember.config import Settings
from ember.testkit import hello_image, push

DEMO_NAME = "demo"


def wait_healthy(url: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"demo: the server exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    sys.exit("demo: the server did not become healthy")


def run_demo(settings: Settings, url: str) -> None:
    token = mint_token(load_or_create_secret(settings.data_dir), "demo", 3600)
    api = EmberClient(url, token)
    print("demo: pushing a test image (busybox + hello) into the built-in registry")
    push(hello_image(), url, "demo/hello", "latest", token=token)
    image = f"{settings.listen}/demo/hello:latest"
    last = None
    for state in api.watch_image(image):
        if state["status"] != last:  # the watch also reports progress within a status
            last = state["status"]
            print(f"demo: image {image}: {last}")
    with contextlib.suppress(ApiError):  # a demo instance left by an earlier run
        api.delete_instance(DEMO_NAME)
    started = time.monotonic()
    instance = api.create_instance(
        name=DEMO_NAME, image=image, vcpus=1, size="256MB",
        env={"GREETING": "hello from the demo"}, cmd=["/hello", "serve", "8080"],
    )  # fmt: skip
    print(f"demo: instance {instance['name']} ({instance['id']}) is {instance['state']}")
    waited = api.wait(DEMO_NAME, "Running", "120s")
    print(f"demo: instance is {waited['state']} after {time.monotonic() - started:.1f}s")
    print("demo: its console says:")
    for line in api.logs(DEMO_NAME, tail=20, follow=True):
        print(f"    {line}")
        if "serving on port" in line:
            break
    print(
        "\ndemo: try, in another shell:\n"
        f"    export EMBER_TOKEN=$(.venv/bin/ember token)\n"
        f'    curl -H "Authorization: Bearer $EMBER_TOKEN" {url}/instances\n'
        "    .venv/bin/ember ps\n"
        f"    .venv/bin/ember logs -f {DEMO_NAME}\n"
        f"    .venv/bin/ember stop {DEMO_NAME} && .venv/bin/ember rm {DEMO_NAME}\n"
        "demo: the server keeps running; Ctrl-C stops it.\n"
    )


def main() -> None:
    settings = Settings()
    url = f"http://{settings.listen}"
    try:
        httpx.get(f"{url}/health", timeout=1)
        sys.exit(
            f"demo: something already listens on {settings.listen}; stop it or set EMBER_LISTEN"
        )
    except httpx.HTTPError:
        pass
    server = subprocess.Popen([sys.executable, "-m", "ember.cli.main", "serve"], env=os.environ)
    try:
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
