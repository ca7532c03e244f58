"""Builds: a first build and a cached rebuild of one small app through Ember's API, vs the
same buildah commands run by hand in a builder VM of the same image, in the same run.

A real `ember serve` runs inside a network namespace this script creates; a busybox base
image (built here) is pushed into its registry. The app: COPY of a file, a RUN that
spends CPU (what the cache saves), ENV and CMD.

- Ember: `POST /builds` to `ready` (wall time, client side), on a fresh builder: the
  builder VM's clone of its template (made by the untimed warm-up build) with the cache
  disk attached, buildah bud, the push into Ember's registry and the conversion to a
  root disk. Then the same source again on the same builder (cached).
- By hand: an instance of the same builder image with a fresh cache volume; in it, over
  exec, the commands Ember runs (`buildah bud --layers`, `buildah push` to the registry
  relay), timed from the first command to the last (the VM already booted), twice.

Targets: Ember's first build <= 1.2x the hand-run first build; the cached rebuild <= 0.3x
of Ember's first build.

    .venv/bin/python -m bench.builds [--spin 300000]
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from hypeman import Hypeman
from hypeman.lib.exec import exec as hypeman_exec

from ember.testkit import build_image, busybox_layer
from ember.testkit.ember_server import EmberServer
from ember.testkit.image import tar_gz
from ember.testkit.netns import in_netns, netns
from ember.testkit.push import push

STEP = "[ember] "  # the runner's timing of each step
RELAY = "10.100.0.1:4974"  # the default network's gateway and relay port
DOCKERFILE = """\
FROM base/busybox:latest
ENV MESSAGE=built-by-bench
COPY app.txt /app/app.txt
RUN i=0; while [ $i -lt {spin} ]; do i=$((i+1)); done; echo "$MESSAGE $i" > /app/done.txt
CMD ["cat", "/app/done.txt"]
"""


def api(server: EmberServer) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.token()}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=600)


def ember_build(
    server: EmberServer, source: bytes, dockerfile: str, name: str
) -> tuple[float, dict[str, float]]:
    """(In the namespace.) Seconds from POST /builds to its terminal status, followed as
    a client would (the events stream, as `ember build` does), and where they went."""
    with api(server) as http:
        start = time.monotonic()
        form = {"dockerfile": dockerfile, "image_name": name, "builder_id": "bench"}
        build = http.post("/builds", files={"source": ("s.tar.gz", source)}, data=form).json()
        events: list[dict[str, Any]] = []
        with http.stream("GET", f"/builds/{build['id']}/events", params={"follow": True}) as sse:
            for line in sse.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1].get("status") in ("ready", "failed", "cancelled"):
                        break
        elapsed = time.monotonic() - start
        got = http.get(f"/builds/{build['id']}").json()
        if got["status"] != "ready":
            raise RuntimeError(f"build {got['id']} {got['status']}: {got.get('error')}")
    return elapsed, phases(events)


def phases(events: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per step as the runner timed them (its `[ember] <step>: <s> s` lines),
    then from its last step to `ready` (the conversion, as far as it was not overlapped)."""
    out: dict[str, float] = {}
    last = 0.0
    for event in events:
        content = event.get("content") or ""
        if event["type"] == "log" and content.startswith(STEP):
            step, _, secs = content.removeprefix(STEP).rpartition(": ")
            out[step] = float(secs.removesuffix(" s"))
            last = datetime.fromisoformat(event["timestamp"]).timestamp()
    out["to ready"] = datetime.fromisoformat(events[-1]["timestamp"]).timestamp() - last
    return out


def set_up(server: EmberServer) -> None:
    push(build_image([busybox_layer()], history=True), server.url, "base/busybox", "latest",
         token=server.token())  # fmt: skip
    with api(server) as http:
        http.post("/builders", json={"id": "bench", "disk_size_gb": 4}).raise_for_status()


def prune(server: EmberServer) -> None:
    with api(server) as http:
        http.post("/builders/bench/prune").raise_for_status()


def by_hand(server: EmberServer, source: bytes, dockerfile: str) -> tuple[float, float]:
    """(In the namespace.) A builder VM made through the API; buildah run in it by hand."""
    client = Hypeman(base_url=server.url, api_key=server.token(), max_retries=0, timeout=600)
    with api(server) as http:
        builder = next(
            i["name"] for i in http.get("/images").json() if "/ember/builder:" in i["name"]
        )
        http.post("/volumes", json={"name": "hand-cache", "size_gb": 4}).raise_for_status()
    inst = client.instances.create(
        name="by-hand", image=builder, cmd=["sleep", "infinity"], size="2048MB", vcpus=2,
        volumes=[{"volume_id": "hand-cache", "mount_path": "/var/lib/containers"}],
    )  # fmt: skip
    auth = base64.b64encode(f"bench:{server.token()}".encode()).decode()
    files = {
        "/build/registries.conf": f'unqualified-search-registries = ["{RELAY}"]\n'
        f'[[registry]]\nlocation = "{RELAY}"\ninsecure = true\n',
        "/build/auth.json": json.dumps({"auths": {RELAY: {"auth": auth}}}),
        "/build/src/Dockerfile": dockerfile,
        "/build/src.tar.gz.b64": base64.b64encode(source).decode(),
    }
    env = "CONTAINERS_REGISTRIES_CONF=/build/registries.conf REGISTRY_AUTH_FILE=/build/auth.json"
    try:
        run_in(client, inst.id, "mkdir -p /build/src /var/lib/containers/tmp", wait_for_agent=300)
        for path, text in files.items():
            run_in(client, inst.id, f"cat > {path} <<'EOF'\n{text}\nEOF")
        run_in(client, inst.id, "base64 -d /build/src.tar.gz.b64 | tar -xz -C /build/src")
        times = []
        for tag in ("one", "two"):
            start = time.monotonic()
            run_in(client, inst.id, f"{env} TMPDIR=/var/lib/containers/tmp buildah bud --layers "
                   f"--isolation=chroot -t hand:{tag} /build/src && {env} buildah push -D "
                   f"hand:{tag} docker://{RELAY}/hand/app:{tag}")  # fmt: skip
            times.append(time.monotonic() - start)
        run_in(client, inst.id, "sync")
    finally:
        client.instances.delete(inst.id)
    return times[0], times[1]


def run_in(client: Hypeman, instance_id: str, script: str, wait_for_agent: int = 0) -> str:
    result = hypeman_exec(client, instance_id, ["sh", "-c", script], wait_for_agent=wait_for_agent)
    output = result.output.decode(errors="replace")
    if result.exit_code != 0:
        raise RuntimeError(f"{script[:80]!r} exited {result.exit_code}: {output[-2000:]}")
    return output


def report(
    ember: tuple[float, float], hand: tuple[float, float], split: list[dict[str, float]]
) -> None:
    rows: list[tuple[str, float, float]] = [
        ("first build", ember[0], hand[0]),
        ("cached rebuild", ember[1], hand[1]),
    ]
    print(f"{'':16} {'ember':>9} {'by hand':>9} {'ratio':>7}")
    for label, mine, theirs in rows:
        print(f"{label:16} {mine:8.1f}s {theirs:8.1f}s {mine / theirs:6.2f}x")
    print(f"ember first build vs by hand: {ember[0] / hand[0]:.2f}x (target <= 1.2x)")
    print(f"ember cached rebuild vs its first build: {ember[1] / ember[0]:.2f}x (target <= 0.3x)")
    print(f"by hand cached vs first (buildah's own cache): {hand[1] / hand[0]:.2f}x")
    for label, parts in zip(("ember first", "ember cached"), split, strict=True):
        print(f"{label}: " + ", ".join(f"{k} {v:.1f}s" for k, v in parts.items()))


def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    source = tar_gz({"app.txt": "the app\n"})
    dockerfile = DOCKERFILE.format(spin=args.spin)
    with netns() as ns:
        server = EmberServer(root / "data", netns=ns)
        try:
            server.start()
            in_netns(ns, set_up, server)
            # The builder image and its template are made by the first build: not timed.
            in_netns(ns, ember_build, server, source, "FROM base/busybox:latest\n", "warm/up")
            in_netns(ns, prune, server)
            first, first_split = in_netns(ns, ember_build, server, source, dockerfile, "b/a:1")
            cached, cached_split = in_netns(ns, ember_build, server, source, dockerfile, "b/a:2")
            hand = in_netns(ns, by_hand, server, source, dockerfile)
            report((first, cached), hand, [first_split, cached_split])
        finally:
            server.clean_up()
            server.stop()
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spin", type=int, default=300_000, help="Loop turns in the RUN step.")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
