from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ember.testkit import BuiltImage, hello_image, push
from ember.testkit.ember_server import EmberServer, serving
from ember.testkit.netns import netns

KEEP_ENV = "EMBER_KEEP_TEST_DIRS"


class Failures:
    """How many tests of this run have failed so far (counted by the hook below)."""

    count = 0


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        Failures.count += 1


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh directory with a short path (Unix sockets live in it: 108 bytes at most).

    Removed afterwards with all it holds (a server's data dir: images, disks, logs), unless
    a test failed while it existed and the run asked to keep them (EMBER_KEEP_TEST_DIRS=1),
    so that a passing run leaves nothing behind and a failing one can be looked into.
    """
    path = Path(tempfile.mkdtemp(prefix="ember-test-", dir="/tmp"))
    failed_before = Failures.count
    failing = False
    try:
        yield path
    except BaseException:
        failing = True
        raise
    finally:
        if os.environ.get(KEEP_ENV) == "1" and (failing or Failures.count > failed_before):
            print(f"\nkept for inspection ({KEEP_ENV}=1): {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def unallocatable_memory() -> str:
    """A `size` QEMU cannot back: far beyond RAM + swap (needs heuristic overcommit)."""
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("vm.overcommit_memory=1: the kernel grants any allocation")
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = sum(int(meminfo[key].split()[0]) for key in ("MemTotal", "SwapTotal"))
    return f"{(kib // 1024**2 + 1) * 8}GB"


@contextmanager
def running_server(
    ns: str | None = None, env: dict[str, str] | None = None
) -> Iterator[EmberServer]:
    """A started server on a fresh data directory (inside namespace `ns` when given);
    afterwards its instances are cleaned up, it is stopped and its directory removed."""
    with scratch_dir() as work, serving(work / "data", ns, env) as server:
        yield server


@pytest.fixture
def ember_server() -> Iterator[EmberServer]:
    with running_server() as server:
        yield server


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmberServer]:
    """One server for a module of VM tests (booting is the slow part, not the server)."""
    with running_server() as server:
        yield server


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    """A network namespace for a module whose server and guests live in it."""
    with netns() as name:
        yield name


def wait_image(server: EmberServer, name: str, timeout: float = 60) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {server.token()}"}
    deadline = time.monotonic() + timeout
    while True:
        image: dict[str, object] = httpx.get(
            f"{server.url}/images/{name.replace('/', '%2F')}", headers=headers
        ).json()
        if image.get("status") in ("ready", "failed") or time.monotonic() > deadline:
            return image
        time.sleep(0.1)


def push_to_ember(server: EmberServer, image: BuiltImage, repository: str, tag: str) -> str:
    """Push into the server's built-in registry; return the ready image's name."""
    push(image, server.url, repository, tag, token=server.token())
    name = f"127.0.0.1:{server.port}/{repository}:{tag}"
    assert wait_image(server, name)["status"] == "ready"
    return name


def fetch(ip: str, tries: int = 100) -> str:
    """The HTTP answer of the hello server in the guest at `ip` (port 8080): it may take
    a moment after Running. Call it inside the test's namespace (`in_netns`)."""
    for _ in range(tries):
        try:
            return httpx.get(f"http://{ip}:8080/", timeout=2).text
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"no HTTP answer from {ip}:8080")


@pytest.fixture(scope="module")
def hello(shared_server: EmberServer) -> str:
    return push_to_ember(shared_server, hello_image(), "hello", "latest")
