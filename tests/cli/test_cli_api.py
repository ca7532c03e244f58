"""The CLI against a real server, without booting VMs: configuration, errors, --json,
load from each kind of local source, volumes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ember.testkit import hello_image, write_oci_layout
from ember.testkit.ember_server import EmberServer
from ember.testkit.image import BuiltImage
from ember.testkit.registry_server import free_port
from tests.cli.conftest import NOT_ON_THE_FAST_PATH, Cli, cli_env, imports_of, run_cli

pytestmark = pytest.mark.server  # starts a real `ember serve`


def test_unreachable_server_is_one_line_and_exit_1() -> None:
    env = cli_env(None, EMBER_BASE_URL=f"http://127.0.0.1:{free_port()}", EMBER_API_KEY="x")
    result = run_cli(["ps"], env)
    assert result.code == 1
    assert len(result.error_lines) == 1, result.err
    assert "cannot reach Ember at http://127.0.0.1:" in result.err
    assert "EMBER_BASE_URL" in result.err
    assert result.out == ""


def test_bad_flag_is_one_line_and_exit_2(cli: Cli) -> None:
    result = cli("ps", "--no-such-flag")
    assert result.code == 2
    assert result.error_lines == [
        "error: No such option: --no-such-flag (see `ember ps --help`)"
    ] or (len(result.error_lines) == 1 and "--no-such-flag" in result.err), result.err


def test_missing_instance_is_one_line_naming_it(cli: Cli) -> None:
    for args, code in (
        (["inspect", "no-such-box"], 1),
        (["logs", "no-such-box"], 1),
        (["stop", "no-such-box"], 1),
        (["exec", "no-such-box", "true"], 125),  # exec passes the workload's codes on
    ):
        result = cli(*args)
        assert result.code == code, (args, result)
        assert len(result.error_lines) == 1, (args, result.err)
        assert result.error_lines[0].startswith("error: ")
        assert "no-such-box" in result.err, (args, result.err)


def test_refused_key_says_which_variable(shared_server: EmberServer) -> None:
    env = cli_env(shared_server, EMBER_API_KEY="not-a-token")
    result = run_cli(["images"], env)
    assert result.code == 1
    assert len(result.error_lines) == 1
    assert "EMBER_API_KEY" in result.err


def test_hypeman_variables_configure_it(shared_server: EmberServer) -> None:
    env = cli_env(None, HYPEMAN_BASE_URL=shared_server.url, HYPEMAN_API_KEY=shared_server.token())
    result = run_cli(["ps", "-a", "--json"], env)
    assert result.code == 0, result.err
    assert isinstance(json.loads(result.out), list)


def image_names(cli: Cli) -> dict[str, dict[str, Any]]:
    result = cli("images", "--json")
    assert result.code == 0, result.err
    return {row["name"]: row for row in json.loads(result.out)}


def test_load_an_oci_layout(cli: Cli, shared_server: EmberServer, tmp_path: Path) -> None:
    image = hello_image(env={"FROM": "layout"})
    write_oci_layout(image, tmp_path / "layout", "v1")
    result = cli("load", str(tmp_path / "layout"), "cli/layout:v1", "--json")
    assert result.code == 0, result.err
    pushed = json.loads(result.out)
    assert pushed["status"] == "ready"
    assert pushed["pushed_digest"] == image.digest
    assert f"127.0.0.1:{shared_server.port}/cli/layout:v1" in image_names(cli)


def test_load_an_oci_archive(cli: Cli, tmp_path: Path) -> None:
    image = hello_image(env={"FROM": "archive"})
    write_oci_layout(image, tmp_path / "layout", "v2")
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "layout", arcname=".")
    result = cli("load", str(archive), "cli/archive:v2")
    assert result.code == 0, result.err
    assert "ready" in result.out
    assert image.digest in result.out


def docker_save(image: BuiltImage, path: Path, tag: str) -> None:
    """A `docker save` tarball as Docker before 25 wrote it: manifest.json, the config
    as <hex>.json, and each layer uncompressed as <id>/layer.tar."""
    manifest = json.loads(image.manifest)
    config = image.blobs[manifest["config"]["digest"]]
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    files: dict[str, bytes] = {config_name: config}
    layers = []
    for index, layer in enumerate(manifest["layers"]):
        tar = gzip.decompress(image.blobs[layer["digest"]])
        files[f"layer{index}/layer.tar"] = tar
        layers.append(f"layer{index}/layer.tar")
    files["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": [tag], "Layers": layers}]
    ).encode()
    with tarfile.open(path, "w") as out:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def test_load_a_docker_save_tarball(cli: Cli, shared_server: EmberServer, tmp_path: Path) -> None:
    docker_save(hello_image(env={"FROM": "docker"}), tmp_path / "saved.tar", "hello:old")
    result = cli("load", str(tmp_path / "saved.tar"), "cli/docker:v3", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["status"] == "ready"
    assert image_names(cli)[f"127.0.0.1:{shared_server.port}/cli/docker:v3"]["status"] == "ready"


def test_load_of_something_else_says_what_it_takes(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = cli("load", str(tmp_path / "notes.txt"), "cli/nope:v1")
    assert result.code == 1
    assert len(result.error_lines) == 1
    assert "docker save" in result.err


def test_volumes_create_list_inspect_remove(cli: Cli, tmp_path: Path) -> None:
    created = cli("volume", "create", "cli-data", "--size", "1", "--json")
    assert created.code == 0, created.err
    volume = json.loads(created.out)
    assert volume["name"] == "cli-data"
    listed = json.loads(cli("volume", "ls", "--json").out)
    assert volume["id"] in {row["id"] for row in listed}
    assert json.loads(cli("volume", "inspect", "cli-data").out)["id"] == volume["id"]

    archive = tmp_path / "site.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"<h1>from an archive</h1>\n"
        info = tarfile.TarInfo("index.html")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    filled = cli("volume", "from-archive", "cli-site", str(archive), "--json")
    assert filled.code == 0, filled.err
    assert json.loads(filled.out)["name"] == "cli-site"

    for name in ("cli-data", "cli-site"):
        assert cli("volume", "rm", name).code == 0
    gone = cli("volume", "inspect", "cli-data")
    assert gone.code == 1 and len(gone.error_lines) == 1


def test_doctor_checks_the_host() -> None:
    result = run_cli(["doctor", "--json"], cli_env(None))
    checks = {check["name"]: check for check in json.loads(result.out)}
    assert set(checks) >= {"QEMU", "Accelerator", "Kernel/initrd", "Bridge", "Caddy", "Disk"}
    assert result.code == (0 if all(c["ok"] for c in checks.values()) else 1)
    accel = checks["Accelerator"]
    assert accel["detail"].startswith(("KVM", "TCG"))
    if accel["detail"].startswith("TCG"):
        assert accel["fix"]  # says why, and what would change it
    jail = checks["VMM jail"]  # which confinement each VMM gets, and what is missing
    assert "-runas" in jail["detail"] and "cgroup v" in jail["detail"]


def test_doctor_asks_the_server_about_its_network(shared_server: EmberServer) -> None:
    """A server may run in a namespace of its own (the demo's): doctor asks it."""
    result = run_cli(["doctor", "--json"], cli_env(shared_server))
    bridge = {check["name"]: check for check in json.loads(result.out)}["Bridge"]
    assert shared_server.url in bridge["detail"], bridge
    assert "without guest networking" in bridge["detail"]  # tests' servers on the host's


# What `ember ps` loaded, printed after it ran (in the same process).
LOADED = """
import sys
from ember.cli.main import main
code = main(["ps", "--json"])
print(" ".join(sorted(sys.modules)), file=sys.stderr)
sys.exit(code)
"""


def test_a_command_imports_only_what_it_needs(shared_server: EmberServer) -> None:
    """Start-up time: minting a token from the data dir loads neither FastAPI, the
    managers nor the server's settings, and `ps` (the fast path) loads no WebSocket
    code, and neither Typer, rich nor httpx."""
    env = cli_env(
        None, EMBER_BASE_URL=shared_server.url, EMBER_DATA_DIR=str(shared_server.data_dir)
    )
    done = subprocess.run([sys.executable, "-c", LOADED], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)  # the minted token was accepted
    loaded = set(done.stderr.split())
    assert "ember.api.auth" in loaded
    heavy = {"fastapi", "pydantic_settings", "ember.instances", "ember.api.app", "ember.config",
             "websockets", "typer", "rich", "httpx"}  # fmt: skip
    assert not heavy & loaded, heavy & loaded


def test_ps_takes_the_fast_path_as_installed(shared_server: EmberServer) -> None:
    """`ember ps` (the installed script, a key in the environment) loads nothing that
    costs more than its request, and prints what the full command prints (which runs
    when rich's colour settings are set: the fast path leaves those to rich)."""
    env = cli_env(shared_server)
    for args in (["ps"], ["ps", "-a", "--state", "running"], ["ps", "-q"]):
        result, loaded = imports_of(args, env)
        assert result.code == 0, result.err
        assert not NOT_ON_THE_FAST_PATH & loaded, (args, NOT_ON_THE_FAST_PATH & loaded)
        full = run_cli(args, env | {"NO_COLOR": "1"})
        assert result.out == full.out, (result.out, full.out)
    # A token minted from the data dir (root on the server host) takes it too.
    minting = cli_env(
        None, EMBER_BASE_URL=shared_server.url, EMBER_DATA_DIR=str(shared_server.data_dir)
    )
    result, loaded = imports_of(["ps"], minting)
    assert result.code == 0 and result.out.startswith("ID "), result.err
    assert "ember.api.auth" in loaded  # and the key was accepted: no full CLI (Typer)
    assert not NOT_ON_THE_FAST_PATH & loaded, NOT_ON_THE_FAST_PATH & loaded


def test_version_and_help_at_80_columns(cli: Cli) -> None:
    version = cli("--version")
    assert version.code == 0 and version.out.startswith("ember "), version
    run_help = cli("run", "--help", COLUMNS="80")
    assert "<bool>" not in run_help.out  # plain flags
    assert "IMAGE" in run_help.out and "[COMMAND]..." in run_help.out  # not {image}
    assert "…" not in run_help.out, run_help.out  # nothing cut (the -p syntax was)
    assert "HOST_PORT:GUEST_PORT" in run_help.out
    network_help = cli("network", "--help", COLUMNS="80")
    (line,) = [line for line in network_help.out.splitlines() if "uninstall" in line]
    assert "Remove Ember's network set-up from this host" in line, network_help.out


def test_sizes_and_states_as_people_type_them(cli: Cli) -> None:
    memory = cli("run", "-m", "lots", "no-such-image")
    assert memory.code == 2 and memory.error_lines == [
        "error: -m/--memory: invalid size 'lots' (expected e.g. 512MB, 2GB, 1G)"
    ], memory.err
    small = cli("volume", "create", "cli-small", "--size", "100MB", "--json")
    assert small.code == 0, small.err
    assert json.loads(small.out)["size_gb"] == 1  # volumes are whole GiB: rounded up
    assert "rounded up to 1 GiB" in small.err
    listed = cli("volume", "ls")
    assert "cli-small" in listed.out and "1 GiB" in listed.out
    assert "\x1b[" not in listed.out  # no colour codes into a pipe
    quiet = cli("volume", "ls", "-q")
    assert json.loads(small.out)["id"][:12] in quiet.out.split()  # as short as the table's
    assert all(len(line) == 12 for line in quiet.out.split())
    assert cli("volume", "rm", "cli-small").code == 0
    lower = cli("ps", "--state", "running", "--json")
    assert lower.code == 0 and isinstance(json.loads(lower.out), list), lower.err


def test_a_name_ember_holds_resolves_to_its_own_registry(
    cli: Cli, shared_server: EmberServer, tmp_path: Path
) -> None:
    """`ember run app:v1` right after `ember load ... app:v1` runs the pushed image, not
    Docker Hub's `docker.io/library/app:v1`."""
    write_oci_layout(hello_image(env={"FROM": "own"}), tmp_path / "layout", "v1")
    assert cli("load", str(tmp_path / "layout"), "cli-own:v1").code == 0
    pulled = cli("pull", "cli-own:v1", "--json")
    assert pulled.code == 0, pulled.err
    assert json.loads(pulled.out)["name"] == f"127.0.0.1:{shared_server.port}/cli-own:v1"
    inspected = json.loads(cli("images", "--json").out)
    assert not any(row["name"].startswith("docker.io/") for row in inspected)


def test_images_say_why_a_pull_failed(cli: Cli) -> None:
    name = f"127.0.0.1:{free_port()}/nowhere/app:v1"  # no registry listens there
    failed = cli("pull", name)
    assert failed.code == 1
    listed = cli("images")
    (row,) = [line for line in listed.out.splitlines() if "nowhere/app" in line]
    assert "failed" in row and len(row.split("failed", 1)[1].strip()) > 0, listed.out
    assert cli("rmi", name).code == 0
