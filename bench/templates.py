"""Templates: a clone to Running vs a cold create to Running, and idle clones vs idle
cold-booted VMs in host memory and CPU, in one run.

A real `ember serve` runs inside a network namespace this script creates, with the
testkit hello image (busybox + a static HTTP server) in 256 MB, 1-vCPU guests.

- Create: per round, in alternating order, `POST /instances` from the image and wait
  for Running (`/wait`), and `POST /instances` with `template` (it answers Running);
  each is deleted after. Target: clone / cold <= 0.10x (medians).
- Density: `--count` clones of the template, then `--count` cold boots (each set
  alone on the host, deleted before the next). Once all are Running and have idled
  `--settle` seconds: PSS summed over their QEMU processes (`/proc/<pid>/smaps_rollup`:
  a page shared by k processes counts 1/k to each, so the template's page-cache pages
  count once in the sum) and the drop of MemAvailable since before the set; then the
  CPU time of those processes over `--window` seconds, as % of one core per VM.
  Targets: <= 64 MB per idle VM, <= 3% of a core.

    .venv/bin/python -m bench.templates [--rounds 3] [--count 10] [--settle 20] [--window 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import WORKLOAD, push_hello
from bench.ingress import api
from ember.testkit.ember_server import EmberServer
from ember.testkit.netns import in_netns, netns

GUEST = {"vcpus": 1, "size": "256MB"}
TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def make_template(server: EmberServer) -> str:
    """(In the namespace.) The image pushed and a template of it; the image's name."""
    with api(server) as http:
        image, _ = push_hello(server, http)
        body = {"name": "bench", "image": image, "cmd": WORKLOAD, **GUEST}
        http.post("/templates", json=body, timeout=300).raise_for_status()
    return image


def create(server: EmberServer, name: str, image: str | None) -> float:
    """(In the namespace.) Seconds from the create request to Running: from `image`, or a
    clone of the template when None."""
    body = {"name": name, "template": "bench"} if image is None else {
        "name": name, "image": image, "cmd": WORKLOAD, **GUEST}  # fmt: skip
    with api(server) as http:
        started = time.perf_counter()
        http.post("/instances", json=body, timeout=300).raise_for_status()
        wait = {"state": "Running", "timeout": "300s"}
        state = http.get(f"/instances/{name}/wait", params=wait, timeout=310).json()["state"]
        took = time.perf_counter() - started
    assert state == "Running", f"{name}: {state}"
    return took


def delete(server: EmberServer, names: list[str]) -> None:
    with api(server) as http:
        for name in names:
            http.delete(f"/instances/{name}", timeout=120).raise_for_status()


def measure_create(ns: str, server: EmberServer, image: str, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"cold": [], "clone": []}
    for round_ in range(rounds):
        for kind in ("cold", "clone") if round_ % 2 == 0 else ("clone", "cold"):
            name = f"{kind}-{round_}"
            times[kind].append(
                in_netns(ns, create, server, name, image if kind == "cold" else None)
            )
            in_netns(ns, delete, server, [name])
    return times


def qemu_pids(names: list[str]) -> list[int]:
    """The QEMU processes of these instances (by their `-name guest=<name>`)."""
    wanted = {f"guest={n}".encode() for n in names}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"qemu-system-x86_64") and wanted & set(args):
            pids.append(int(entry.name))
    return pids


def pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


def measure_set(
    ns: str, server: EmberServer, kind: str, image: str | None, args: argparse.Namespace
) -> dict[str, float]:
    """`args.count` VMs of one kind: per VM, PSS, MemAvailable drop, % of a core idle."""
    names = [f"{kind}-idle-{i}" for i in range(args.count)]
    available = mem_available()
    for name in names:
        in_netns(ns, create, server, name, image)
    time.sleep(args.settle)
    pids = qemu_pids(names)
    assert len(pids) == args.count, f"{kind}: {len(pids)} QEMU processes for {args.count} VMs"
    pss = sum(pss_bytes(pid) for pid in pids)
    drop = available - mem_available()
    before, started = sum(cpu_seconds(p) for p in pids), time.monotonic()
    time.sleep(args.window)
    used = sum(cpu_seconds(p) for p in pids) - before
    cpu = used / (time.monotonic() - started) * 100
    in_netns(ns, delete, server, names)
    return {"pss": pss / args.count, "drop": drop / args.count, "cpu": cpu / args.count}


def report(times: dict[str, list[float]], sets: dict[str, dict[str, float]],
           args: argparse.Namespace) -> None:  # fmt: skip
    cold, clone = (statistics.median(times[k]) for k in ("cold", "clone"))
    print(f"create to Running ({args.rounds} rounds alternating, 256 MB, 1 vCPU), medians:")
    for kind, label in (("cold", "cold create from the image"), ("clone", "clone of a template")):
        values = ", ".join(f"{v:.2f}" for v in times[kind])
        print(f"  {label:32}{statistics.median(times[kind]):7.3f} s   ({values})")
    print(f"  ratio clone/cold: {clone / cold:.3f}x (target <= 0.10x)")
    print(f"{args.count} idle VMs per kind, after {args.settle} s idle; CPU over "
          f"{args.window} s:")  # fmt: skip
    print(f"  {'':28}{'PSS MB/VM':>11}{'MemAvail drop MB/VM':>21}{'% core/VM':>11}")
    for kind, label in (("cold", "cold-booted instances"), ("clone", "clones of one template")):
        s = sets[kind]
        print(f"  {label:28}{s['pss'] / MIB:11.1f}{s['drop'] / MIB:21.1f}{s['cpu']:11.2f}")
    c, k = sets["cold"], sets["clone"]
    print(f"  ratio clone/cold: PSS {k['pss'] / c['pss']:.2f}x, MemAvailable drop "
          f"{k['drop'] / c['drop']:.2f}x, CPU {k['cpu'] / c['cpu']:.2f}x "
          "(targets: clone PSS <= 64 MB/VM, CPU <= 3% of a core/VM)")  # fmt: skip


def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp"))
    with netns() as ns:
        # Admission allows cores x 4 vCPUs by default: 10 + 1 one-vCPU VMs need more.
        env = {"EMBER_CPU_OVERSUBSCRIPTION": str(max(4, args.count + 2))}
        server = EmberServer(root / "data", netns=ns, env=env)
        try:
            server.start()
            image = in_netns(ns, make_template, server)
            times = measure_create(ns, server, image, args.rounds)
            sets = {"clone": measure_set(ns, server, "clone", None, args),
                    "cold": measure_set(ns, server, "cold", image, args)}  # fmt: skip
            report(times, sets, args)
        finally:
            server.clean_up()
            server.stop()
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=20.0)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
