"""Drive `ember` as a subprocess, as a person or a script would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from ember.testkit.ember_server import EmberServer

EMBER = [sys.executable, "-m", "ember.cli.main"]


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
