"""The README's examples run as written against a real server: every block marked
`<!-- tested: tests/cli/test_readme.py ... -->` (its shell and Python), in the state
`make run` leaves (the demo's image pushed, the `demo` instance running). Only the
server's address differs: the README's `127.0.0.1:4973` is this test server's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.client import EmberClient
from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from tests.cli.conftest import cli_env
from tests.conftest import push_to_ember

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[2]
MARKED = re.compile(r"<!-- tested: tests/cli/test_readme\.py[^>]*-->\n```(\w+)\n(.*?)```", re.S)
README_ADDRESS = "127.0.0.1:4973"


def examples(language: str) -> list[str]:
    blocks = [code for lang, code in MARKED.findall((ROOT / "README.md").read_text())
              if lang == language]  # fmt: skip
    assert blocks, f"README.md has no tested {language} block"
    return blocks


@pytest.fixture(scope="module")
def demo(shared_server: EmberServer) -> Iterator[EmberClient]:
    """What `make run` leaves: demo/hello:latest pushed, `demo` running its web server."""
    push_to_ember(shared_server, hello_image(), "demo/hello", "latest")
    api = EmberClient(shared_server.url, shared_server.token())
    image = f"127.0.0.1:{shared_server.port}/demo/hello:latest"
    api.create_instance(name="demo", image=image, cmd=["/hello", "serve", "8080"],
                        vcpus=1, size="256MB")  # fmt: skip
    assert api.wait("demo", "Running", "120s")["state"] == "Running"
    try:
        yield api
    finally:
        api.delete_instance("demo")
        api.close()


def run(command: list[str], code: str, server: EmberServer) -> subprocess.CompletedProcess[str]:
    env = cli_env(None, EMBER_BASE_URL=server.url, EMBER_DATA_DIR=str(server.data_dir),
                  EMBER_API_KEY=server.token())  # fmt: skip
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    code = code.replace(README_ADDRESS, f"127.0.0.1:{server.port}")
    return subprocess.run([*command, code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_the_shell_examples_run(demo: EmberClient, shared_server: EmberServer) -> None:
    for block in examples("sh"):
        done = run(["bash", "-euo", "pipefail", "-c"], block, shared_server)
        assert done.returncode == 0, (block, done.stdout, done.stderr)
        assert "demo" in done.stdout  # ps lists it, and exec ran in it
        assert "bin" in done.stdout.split()  # `ember exec demo -- ls /`


def test_the_python_examples_run(demo: EmberClient, shared_server: EmberServer) -> None:
    for block in examples("python"):
        done = run([sys.executable, "-c"], block, shared_server)
        assert done.returncode == 0, (block, done.stdout, done.stderr)
        assert "Linux" in done.stdout  # uname -a in the guest
        assert "# Ember" in done.stdout  # README.md copied in and read back
    assert "web" not in {row["name"] for row in demo.instances()}  # it cleaned up
