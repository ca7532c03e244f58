"""CLI wall time beside curl of the same API call, in one run.

- `ember ps` (GET /instances) beside `curl` of GET /instances, with the key in
  EMBER_API_KEY and with the CLI minting its own token from the data dir (as root
  on the server host does), and beside `python -c pass`: the interpreter's own
  start, which no Python command goes below;
- `ember exec NAME true` beside `curl` of GET /instances/NAME (curl speaks no
  WebSocket: this is the HTTP floor of the same lookup) and beside a bare
  Python `websockets` client doing the same exec (interpreter start included).

Each command runs as a new process, as a person's shell starts it; the sides take
turns so load from elsewhere falls on both alike; the figures are medians. Beside
the wall time, the CPU time (user + system) each process used: on a busy host the
wall time is mostly waiting for a core, and the CPU time still says what the
command itself costs. The load average is printed before and after.

`ember` runs as installed: its modules compiled to bytecode first, as pip compiles
an installed package (an editable install writes it on first run, unless
PYTHONDONTWRITEBYTECODE, set on some hosts, forbids it: then every run compiles
the CLI's modules from source, ~10 ms that no installed `ember` pays).

    .venv/bin/python -m bench.cli [--runs 20]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

import ember
from bench.common import WORKLOAD, push_hello
from ember.testkit.ember_server import EmberServer

NAME = "bench-cli"
# The `ember` command as installed (what a person types), else the module.
SCRIPT = Path(sys.executable).with_name("ember")
EMBER = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "ember.cli.main"]
# The same exec over the API's WebSocket with nothing but `websockets`: what any client
# process pays at least (interpreter start, import, connect, run, exit code).
BARE_EXEC = """
import json, sys
from websockets.sync.client import connect
url, token = sys.argv[1], sys.argv[2]
with connect(url, additional_headers={"Authorization": "Bearer " + token}) as ws:
    ws.send(json.dumps({"command": ["true"]}))
    while not isinstance(frame := ws.recv(), str) or "exitCode" not in frame:
        pass
"""


def measure(command: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `command`."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command)
    return elapsed, usage.ru_utime + usage.ru_stime


def compare(label: str, sides: dict[str, tuple[list[str], dict[str, str]]], runs: int) -> None:
    """Run each side `runs` times, taking turns; print medians (wall and CPU time) and
    their ratios to the first side's."""
    times: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    for _ in range(runs):
        for side, (command, env) in sides.items():
            times[side].append(measure(command, env))
    medians = {
        side: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for side, values in times.items()
    }
    base_wall, base_cpu = medians[next(iter(sides))]
    print(f"{label} (median of {runs}; wall, then CPU):")
    for side, (wall, cpu) in medians.items():
        print(
            f"    {side:<34} {wall * 1000:7.1f} ms {wall / base_wall:6.2f}x"
            f"   {cpu * 1000:6.1f} ms {cpu / max(base_cpu, 1e-3):6.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    compileall.compile_dir(Path(ember.__file__).parent, quiet=1)
    print("load average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    server = EmberServer(root / "data").start()
    try:
        token = server.token()
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})
        image, _ = push_hello(server, http)
        http.post("/instances", json={"name": NAME, "image": image, "cmd": WORKLOAD,
                                      "vcpus": 1, "size": "256MB"}).raise_for_status()  # fmt: skip
        http.get(f"/instances/{NAME}/wait", params={"state": "Running", "timeout": "120s"},
                 timeout=130)  # fmt: skip
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("EMBER_", "HYPEMAN_"))}
        keyed = clean | {"EMBER_BASE_URL": server.url, "EMBER_API_KEY": token}
        minting = clean | {"EMBER_BASE_URL": server.url, "EMBER_DATA_DIR": str(server.data_dir)}
        auth = ["-H", f"Authorization: Bearer {token}"]
        curl = ["curl", "-sf", "-o", "/dev/null", *auth]
        compare("ember ps (GET /instances)", {
            "curl": ([*curl, f"{server.url}/instances"], clean),
            "python -c pass (interpreter floor)": ([sys.executable, "-c", "pass"], clean),
            "ember ps, EMBER_API_KEY set": ([*EMBER, "ps"], keyed),
            "ember ps, token minted": ([*EMBER, "ps"], minting),
        }, args.runs)  # fmt: skip
        ws_url = server.url.replace("http://", "ws://") + f"/instances/{NAME}/exec"
        compare(f"ember exec {NAME} true", {
            "curl GET /instances/NAME": ([*curl, f"{server.url}/instances/{NAME}"], clean),
            "python + websockets, same exec": ([sys.executable, "-c", BARE_EXEC, ws_url, token],
                                               clean),
            "ember exec, EMBER_API_KEY set": ([*EMBER, "exec", NAME, "true"], keyed),
        }, args.runs)  # fmt: skip
        print("target: ember ps at most 3x curl")
        print("load average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    finally:
        server.clean_up()  # its VM would outlive the server (by design)
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
