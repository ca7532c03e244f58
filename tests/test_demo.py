"""The demo end to end, in a namespace and on ports of its own: the walk, a port published
while it runs answering on the host's loopback, and `clean` leaving nothing behind."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from ember.config import Settings
from ember.demo import DemoPlace, clean, namespace_exists, run_demo, serving
from ember.testkit.netns import netns
from ember.testkit.registry_server import free_port
from tests.conftest import scratch_dir

pytestmark = pytest.mark.vm


def get_on_host(port: int, tries: int = 100) -> httpx.Response:
    """A request to the host's loopback (the demo's forwards appear within a second)."""
    for _ in range(tries):
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answers on 127.0.0.1:{port}")


def processes_naming(path: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in text:
            found.append(text)
    return found


def test_demo_forwards_published_ports_and_clean_leaves_nothing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with scratch_dir() as work, netns() as ns:
        data = work / "data"
        settings = Settings(data_dir=data, listen=f"127.0.0.1:{free_port()}")
        place = DemoPlace(settings, namespace=ns, ingress_port=free_port())
        published = free_port()
        with serving(place):
            run_demo(place)
            narration = capfd.readouterr().out  # the server's fds too
            with place.client() as api:
                # What `ember run -p PORT:8080` makes, on a port the demo did not know.
                rule = {"match": {"hostname": "*", "port": published},
                        "target": {"instance": "demo", "port": 8080}}  # fmt: skip
                api.create_ingress("web", [rule], tags={"ember.run/instance": "demo"})
                answer = get_on_host(published)
                api.delete_ingress("web")
        assert "(no answer)" not in narration and "1 GiB" in narration
        assert "make clean-demo" in narration
        # The server's access log went to its file, not into the narration.
        assert "GET /" not in narration and "GET /" in place.server_log.read_text()
        assert answer.status_code == 200 and answer.text.startswith("hello")

        removed = clean(place)
        for thing in ("ingress demo", "instance demo", "volume demo-data", "caddy", "ember0",
                      "nft table inet ember", f"namespace {ns}"):  # fmt: skip
            assert thing in removed, (thing, removed)
        assert not namespace_exists(ns)
        assert processes_naming(data) == []  # no QEMU, no Caddy
        assert list((data / "instances").iterdir()) == []
        assert list((data / "volumes").iterdir()) == []
        db = sqlite3.connect(data / "ember.db")
        assert db.execute("SELECT count(*) FROM network_leases").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM ingresses").fetchone() == (0,)
