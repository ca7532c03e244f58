"""Drive `ember` as a subprocess, as a person or a script would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from ember.testkit.ember_server import EmberServer

EMBER = [sys.executable, "-m", "ember.cli.main"]
REPO = Path(__file__).resolve().parents[2]
# Modules that cost the fast path more than its request (ember/client/wire.py).
NOT_ON_THE_FAST_PATH = frozenset({
    "re", "enum", "typing", "socket", "json", "urllib.parse", "pathlib", "encodings.idna",
    "datetime", "http.client", "typer", "rich", "httpx", "websockets",
})  # fmt: skip


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli_env(server: EmberServer | None, **extra: str) -> dict[str, str]:
    """A clean environment: no inherited Ember or Hypeman settings, a wide terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBER_", "HYPEMAN_"))}
    env["COLUMNS"] = "200"
    # A data dir with no secret: only the key given here may authenticate.
    env["EMBER_DATA_DIR"] = "/nonexistent-ember-cli-test"
    if server is not None:
        env |= {"EMBER_BASE_URL": server.url, "EMBER_API_KEY": server.token()}
    return env | extra


Cli = Callable[..., Result]


def run_cli(
    args: Sequence[str], env: dict[str, str], stdin: str | None = None, timeout: float = 300
) -> Result:
    done = subprocess.run(
        [*EMBER, *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def cli(shared_server: EmberServer) -> Cli:
    env = cli_env(shared_server)

    def call(*args: str, stdin: str | None = None, **extra: str) -> Result:
        return run_cli(args, env | extra, stdin)

    return call


def imports_of(args: Sequence[str], env: dict[str, str]) -> tuple[Result, set[str]]:
    """Run the `ember` script as installed (bin/ember) and list the modules it imported
    (`-X importtime`), apart from the interpreter's own start: `-S` leaves out site's
    imports, which depend on how the virtualenv was made (`make setup`'s is a plain path)."""
    done = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", str(REPO / "bin" / "ember"), *args],
        env=env | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    timings = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    names = {line.rsplit("|", 1)[1].strip() for line in timings[1:]}
    errors = "\n".join(line for line in done.stderr.splitlines() if line not in timings)
    return Result(done.returncode, done.stdout, errors), names
