"""`ember builder ...` and `ember build`'s refusals through a real server (no network on
it, so no build runs: those are in test_builds_vm.py); the context packing."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from ember.cli.builds import source_archive
from ember.testkit.ember_server import EmberServer
from tests.cli.conftest import cli_env, run_cli


def test_context_leaves_out_vcs_and_virtualenvs(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print(1)")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("")
    with tarfile.open(fileobj=io.BytesIO(source_archive(tmp_path)), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["app.py", "pkg", "pkg/mod.py"]


@pytest.mark.server
def test_builder_commands_and_a_refused_build(ember_server: EmberServer, tmp_path: Path) -> None:
    env = cli_env(ember_server)
    created = run_cli(["builder", "create", "--id", "ci", "--disk-size", "1", "--json"], env)
    assert created.code == 0, created.err
    assert json.loads(created.out)["id"] == "ci"
    listed = run_cli(["builder", "ls"], env)
    assert "ci" in listed.out and "1 GiB" in listed.out
    assert json.loads(run_cli(["builder", "inspect", "ci"], env).out)["queued_builds"] == []
    assert run_cli(["builder", "prune", "ci"], env).code == 0
    (tmp_path / "Dockerfile").write_text("FROM base/busybox:latest\n")
    refused = run_cli(["build", str(tmp_path), "--builder", "ci"], env)
    assert refused.code != 0 and "network" in refused.err  # this server has none
    bad = run_cli(["build", str(tmp_path), "-t", "Not/Valid"], env)
    assert bad.code != 0 and "image_name" in bad.err
    secret = run_cli(["build", str(tmp_path), "--secret", "id=x"], env)
    assert secret.code == 2 and "id=ID,src=FILE" in secret.err
    assert run_cli(["builder", "rm", "ci"], env).code == 0
    assert "ci" not in run_cli(["builder", "ls", "-q"], env).out
