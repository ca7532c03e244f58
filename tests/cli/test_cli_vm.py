"""The CLI with real VMs: `run` attached (logs followed, exit code passed on), `exec -it`
through a pseudo-terminal this test plays, `cp` both ways, `logs -f`, `-p` ingresses.

Two VMs in all (256 MB, one vCPU): one that exits 7, one long-lived `box`.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import tarfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.testkit import hello_image
from ember.testkit.ember_server import EmberServer
from ember.testkit.registry_server import free_port
from tests.cli.conftest import EMBER, NOT_ON_THE_FAST_PATH, Cli, cli_env, imports_of
from tests.conftest import push_to_ember, running_server

pytestmark = pytest.mark.vm
SMALL = ["--memory", "256MB", "--cpus", "1"]
BOX = "cli-box"
INGRESS_PORT = free_port()
# Ticks for `logs -f`; a web server for the ingress.
BOX_SCRIPT = "/hello serve 8080 & i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmberServer]:
    """This module's server: its ingresses listen on loopback only."""
    env = {"EMBER_INGRESS_LISTEN_ADDRESS": "127.0.0.1"}
    with running_server(env=env) as server:
        yield server


def test_run_follows_the_output_and_exits_with_the_workload_code(cli: Cli, hello: str) -> None:
    # A leading `--` only ends the options (POSIX utility syntax).
    result = cli("run", "--name", "cli-seven", *SMALL, hello, "--",
                 "/bin/sh", "-c", "echo hi from the guest; echo to stderr >&2; exit 7")  # fmt: skip
    assert result.code == 7, result
    assert "hi from the guest" in result.out
    assert "to stderr" in result.out
    listed = json.loads(cli("ps", "-a", "--json").out)
    (seven,) = [row for row in listed if row["name"] == "cli-seven"]
    assert seven["exit_code"] == 7
    assert "cli-seven" not in cli("ps").out  # only running ones without -a
    assert cli("rm", "cli-seven").code == 0
    missing = cli("inspect", "cli-seven")
    assert missing.code == 1 and "cli-seven" in missing.err


def test_run_says_why_a_command_did_not_start_and_rm_removes_it(cli: Cli, hello: str) -> None:
    before = {row["id"] for row in json.loads(cli("ps", "-a", "--json").out)}
    result = cli("run", "--rm", *SMALL, hello, "no-such-command", "--flag-of-the-workload")
    assert result.code == 127, result
    assert "command not found: no-such-command" in result.err
    after = {row["id"] for row in json.loads(cli("ps", "-a", "--json").out)}
    assert after == before  # --rm deleted it


def test_exec_and_cp_say_when_the_program_has_exited(cli: Cli, hello: str, tmp_path: Path) -> None:
    """The VM powers off when its program exits: exec and cp say so, whether the program
    ends during the exec or before it."""
    started = cli("run", "-d", "--name", "cli-brief", *SMALL, hello, "/bin/sleep", "8")
    assert started.code == 0, started
    during = cli("exec", "cli-brief", "/bin/sleep", "60")  # outlives the program
    assert during.code != 0
    assert "has exited" in during.out + during.err, during
    assert "agent connection closed" not in during.out + during.err
    assert cli("wait", "cli-brief").code == 0
    after = cli("exec", "cli-brief", "true")
    assert after.code == 125 and len(after.error_lines) == 1, after
    assert "cli-brief' has exited" in after.err, after.err
    copy = cli("cp", "cli-brief:/hello", str(tmp_path))
    assert copy.code == 1 and "has exited" in copy.err, copy.err
    assert cli("rm", "cli-brief").code == 0


@pytest.fixture(scope="module")
def box(cli: Cli, hello: str) -> Iterator[dict[str, object]]:
    result = cli("run", "-d", "--json", "--name", BOX, *SMALL, "-p", f"{INGRESS_PORT}:8080",
                 "-e", "GREETING=hello from env", hello, "/bin/sh", "-c", BOX_SCRIPT)  # fmt: skip
    assert result.code == 0, result
    instance: dict[str, object] = json.loads(result.out)
    assert instance["state"] == "Running"
    try:
        yield instance
    finally:
        cli("rm", "-f", BOX)


def test_inspect_by_id_prefix_and_json(cli: Cli, box: dict[str, object]) -> None:
    prefix = str(box["id"])[:8]
    result = cli("inspect", prefix)
    assert result.code == 0, result.err
    assert json.loads(result.out)["name"] == BOX
    stats = json.loads(cli("stats", BOX, "--json").out)
    assert stats[0]["instance_name"] == BOX and stats[0]["allocated_vcpus"] == 1


def test_ps_fits_80_columns_and_q_prints_the_ids_it_shows(cli: Cli, box: dict[str, object]) -> None:
    table = cli("ps", COLUMNS="80")
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert all(len(line) <= 80 for line in lines), table.out
    assert "…" not in table.out  # nothing cut to `127.0.0.1:4…`
    (row,) = [line for line in lines if BOX in line]
    assert str(box["id"])[:12] in row and "256 MiB" in row  # units as everywhere: MiB/GiB
    assert str(box["id"])[:12] in cli("ps", "-q").out.split()
    assert all(len(ref) == 12 for ref in cli("ps", "-q").out.split())
    assert cli("ps", "--state", "running", "-q").out == cli("ps", "-q").out


def test_exec_passes_output_env_and_exit_code(
    cli: Cli, box: dict[str, object], shared_server: EmberServer
) -> None:
    result = cli("exec", BOX, "/bin/sh", "-c", "echo $GREETING; exit 3")
    assert result.code == 3
    assert result.out.strip() == "hello from env"
    flags = cli("exec", "-e", "X=1", BOX, "/bin/sh", "-c", "echo x=$X; ls -d /tmp")
    assert flags.code == 0 and flags.out.split() == ["x=1", "/tmp"]
    dashes = cli("exec", BOX, "--", "echo", "after dashes")
    assert dashes.code == 0 and dashes.out == "after dashes\n", dashes
    # As installed, a plain exec loads nothing that costs more than its request.
    fast, loaded = imports_of(["exec", BOX, "/bin/sh", "-c", "echo $GREETING; exit 3"],
                              cli_env(shared_server))  # fmt: skip
    assert (fast.code, fast.out) == (result.code, result.out), fast
    assert not NOT_ON_THE_FAST_PATH & loaded, NOT_ON_THE_FAST_PATH & loaded
    # The end of piped input reaches the process: `cat` ends instead of waiting forever.
    piped = cli("exec", "-i", BOX, "cat", stdin="line one\nline two\n")
    assert piped.code == 0 and piped.out == "line one\nline two\n"


class Terminal:
    """The far side of a pseudo-terminal `ember` runs in: type, read, resize."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: `ember` with the pty as its controlling terminal
            os.execve(EMBER[0], [*EMBER, *args], env)
        self.seen = b""

    def type(self, text: str | bytes) -> None:
        os.write(self.fd, text.encode() if isinstance(text, str) else text)

    def expect(self, needle: str, timeout: float = 120) -> str:
        """Read until `needle` shows up; the deadline only stops a broken test hanging."""
        found = self.read_until(needle, timeout)
        assert found is not None, f"never saw {needle!r} in {self.seen[-2000:]!r}"
        return found

    def read_until(self, needle: str, timeout: float) -> str | None:
        """What was read up to `needle`, or None if it did not come within `timeout`."""
        deadline = time.monotonic() + timeout
        while needle.encode() not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                assert chunk, f"terminal closed before {needle!r}: {self.seen[-2000:]!r}"
                self.seen += chunk
        found = self.seen.decode(errors="replace")
        self.seen = b""
        return found

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def exit_code(self) -> int:
        while True:  # drain, so the child never blocks writing
            try:
                if not os.read(self.fd, 4096):
                    break
            except OSError:
                break
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def test_exec_it_is_an_interactive_terminal(
    shared_server: EmberServer, box: dict[str, object]
) -> None:
    terminal = Terminal(["exec", "-it", BOX, "/bin/sh"], cli_env(shared_server, TERM="vt100"))
    terminal.resize(24, 80)
    terminal.expect("# ")
    terminal.type("echo term=$TERM\r")
    assert "term=vt100" in terminal.expect("# ")  # the client's TERM
    terminal.type("echo $((6 * 7))\r")
    assert "42" in terminal.expect("# ")
    # A resize reaches the guest's terminal (SIGWINCH -> resize frame -> TIOCSWINSZ).
    terminal.resize(33, 97)
    for _ in range(20):  # the resize and the typing travel separately: ask until it shows
        terminal.type("/bin/busybox stty size\r")
        if "33 97" in terminal.expect("# "):
            break
    else:
        pytest.fail("the guest terminal never became 33x97")
    # Keys go through raw: Ctrl-C interrupts the guest's command, not `ember`.
    terminal.type("sleep 600\r")
    terminal.expect("sleep 600\r\n")
    for _ in range(20):  # a Ctrl-C before sleep has started reaches only the shell: again
        terminal.type(b"\x03")
        if terminal.read_until("# ", 3) is not None:
            break
    else:
        pytest.fail("Ctrl-C never interrupted the guest's sleep")
    terminal.type("false\r")
    terminal.expect("# ")
    terminal.type(b"\x04")  # Ctrl-D: the shell ends with the last command's status
    assert terminal.exit_code() == 1


def test_run_it_is_a_terminal_and_rm_removes_the_instance(
    cli: Cli, shared_server: EmberServer, hello: str
) -> None:
    before = {row["id"] for row in json.loads(cli("ps", "-a", "--json").out)}
    terminal = Terminal(["run", "-it", "--rm", *SMALL, hello, "/bin/sh"], cli_env(shared_server))
    terminal.resize(24, 80)
    terminal.expect("# ", timeout=300)  # a boot first
    terminal.type("echo $((6 * 7))\r")
    assert "42" in terminal.expect("# ")
    terminal.type("exit 3\r")
    assert terminal.exit_code() == 3
    after = {row["id"] for row in json.loads(cli("ps", "-a", "--json").out)}
    assert after == before


def test_cp_both_ways(
    cli: Cli, box: dict[str, object], tmp_path: Path, shared_server: EmberServer
) -> None:
    (tmp_path / "note.txt").write_text("a note\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("A\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    (tree / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (tree / "sub" / "run.sh").chmod(0o750)

    assert cli("cp", str(tmp_path / "note.txt"), f"{BOX}:/tmp/").code == 0
    assert cli("exec", BOX, "cat", "/tmp/note.txt").out == "a note\n"
    into = cli("cp", str(tree), f"{BOX}:/tmp/copied")
    assert into.code == 0, into.err
    listing = cli("exec", BOX, "/bin/sh", "-c", "cat /tmp/copied/a.txt; ls /tmp/copied/sub")
    assert listing.out.split() == ["A", "b.bin", "run.sh"]

    out = tmp_path / "out"
    out.mkdir()
    back = cli("cp", f"{BOX}:/tmp/copied", str(out))
    assert back.code == 0, back.err
    assert (out / "copied" / "a.txt").read_text() == "A\n"
    assert (out / "copied" / "sub" / "b.bin").read_bytes() == (tree / "sub" / "b.bin").read_bytes()
    assert (out / "copied" / "sub" / "run.sh").stat().st_mode & 0o777 == 0o750
    single = cli("cp", f"{BOX}:/tmp/note.txt", str(tmp_path / "renamed.txt"))
    assert single.code == 0 and (tmp_path / "renamed.txt").read_text() == "a note\n"

    # `-` is a tar stream, as docker cp has it: to stdout, and from stdin.
    env = cli_env(shared_server)
    tar_out = subprocess.run([*EMBER, "cp", "-q", f"{BOX}:/tmp/copied", "-"], env=env,
                             capture_output=True, check=True).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(tar_out)) as tar:
        assert {"copied", "copied/a.txt", "copied/sub/b.bin"} <= set(tar.getnames())
        extracted = tar.extractfile("copied/sub/b.bin")
        assert extracted is not None
        assert extracted.read() == (tree / "sub" / "b.bin").read_bytes()
    tar_in = io.BytesIO()
    with tarfile.open(fileobj=tar_in, mode="w") as tar:
        tar.add(tree / "a.txt", arcname="from-stdin/a.txt")
    subprocess.run([*EMBER, "cp", "-q", "-", f"{BOX}:/tmp"], env=env, input=tar_in.getvalue(),
                   capture_output=True, check=True)  # fmt: skip
    assert cli("exec", BOX, "cat", "/tmp/from-stdin/a.txt").out == "A\n"

    missing = cli("cp", f"{BOX}:/no/such/file", str(out))
    assert missing.code == 1 and len(missing.error_lines) == 1, missing.err
    assert "ember serve" not in missing.err  # the server answered: no hint it is not running


def test_logs_follow_shows_new_lines(shared_server: EmberServer, box: dict[str, object]) -> None:
    follower = subprocess.Popen(
        [*EMBER, "logs", "-f", "--tail", "1", BOX], env=cli_env(shared_server),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        ticks: list[int] = []
        while len(ticks) < 3:  # the tail, then lines written after the command started
            line = follower.stdout.readline()
            assert line, "logs -f ended"
            if line.startswith("tick "):
                ticks.append(int(line.split()[1]))
        assert ticks == sorted(ticks) and len(set(ticks)) == 3
    finally:
        follower.terminate()
        follower.wait(10)


def test_publish_made_an_ingress(cli: Cli, box: dict[str, object]) -> None:
    ingresses = json.loads(cli("ingress", "ls", "--json").out)
    (published,) = [i for i in ingresses if i["name"] == f"{BOX}-{INGRESS_PORT}"]
    assert [(r["match"]["hostname"], r["target"]["port"]) for r in published["rules"]] == [
        ("*", 8080)
    ]
    # No request goes through it: Caddy would carry it to the VM's address on the host's
    # bridge, and tests send traffic only to loopback or their own namespaces (the
    # ingress end-to-end tests run in one).
    port = free_port()
    created = cli("ingress", "create", BOX, "--port", "8080", "-H", "app.cli.test",
                  "--host-port", str(port), "--json")  # fmt: skip
    assert created.code == 0, created.err
    ingress = json.loads(created.out)
    assert ingress["name"] == "app-cli-test"
    assert ingress["rules"][0]["match"] == {"hostname": "app.cli.test", "port": port}
    assert json.loads(cli("ingress", "inspect", ingress["id"][:10]).out)["name"] == "app-cli-test"
    assert cli("ingress", "rm", "app-cli-test").code == 0
    gone = cli("ingress", "inspect", "app-cli-test")
    assert gone.code == 1 and len(gone.error_lines) == 1


def test_standby_and_restore_keep_the_guest_as_it_was(cli: Cli, box: dict[str, object]) -> None:
    assert cli("exec", BOX, "/bin/sh", "-c", "echo kept > /tmp/state").code == 0
    standby = cli("standby", BOX)
    assert standby.code == 0, standby.err
    assert "Standby" in standby.out and " in " in standby.out  # how long it took
    assert json.loads(cli("inspect", BOX).out)["state"] == "Standby"
    restored = cli("restore", BOX, "--json")
    assert restored.code == 0, restored.err
    assert json.loads(restored.out)["state"] == "Running"
    assert cli("exec", BOX, "cat", "/tmp/state").out == "kept\n"


def test_snapshots_and_forks_through_the_cli(cli: Cli, box: dict[str, object]) -> None:
    assert cli("exec", BOX, "/bin/sh", "-c", "echo snapped > /tmp/mark").code == 0
    made = cli("snapshot", "create", BOX, "--name", "cli-snap", "--json")
    assert made.code == 0, made.err
    snapshot = json.loads(made.out)
    listed = json.loads(cli("snapshot", "ls", "--instance", BOX, "--json").out)
    assert [s["id"] for s in listed] == [snapshot["id"]]
    assert json.loads(cli("snapshot", "inspect", snapshot["id"][:12]).out)["name"] == "cli-snap"
    forked = cli("snapshot", "fork", "cli-snap", "cli-clone", "--json")  # by name
    assert forked.code == 0, forked.err
    clone = json.loads(forked.out)
    assert clone["name"] == "cli-clone" and clone["id"] != box["id"]
    assert cli("wait", "cli-clone", "--state", "Running").code == 0
    assert cli("exec", "cli-clone", "cat", "/tmp/mark").out == "snapped\n"  # memory kept
    assert cli("rm", "-f", "cli-clone").code == 0
    assert cli("snapshot", "rm", snapshot["id"][:12]).code == 0  # the id `snapshot ls` shows
    assert json.loads(cli("snapshot", "ls", "--json").out) == []


def test_rmi_untags_a_shared_image_and_goes_on_after_errors(
    cli: Cli, box: dict[str, object], shared_server: EmberServer, hello: str
) -> None:
    alias = push_to_ember(shared_server, hello_image(), "cli/alias", "v1")  # the box's image
    result = cli("rmi", alias, "no-such-image:v9", hello)
    assert result.code == 1, result
    assert f"deleted {alias}" in result.out  # only the name: the box's image keeps its other
    assert len(result.error_lines) == 2, result.err  # each failure reported, none skipped
    assert "no-such-image:v9" in result.error_lines[0]
    assert "used by" in result.error_lines[1]  # its last name, the box runs from it
    names = {row["name"] for row in json.loads(cli("images", "--json").out)}
    assert hello in names and alias not in names


def test_snapshot_and_fork_errors_say_what_to_type(cli: Cli, box: dict[str, object]) -> None:
    running = cli("fork", BOX, "cli-fork")
    assert running.code == 1 and "--from-running" in running.err, running.err
    assert "from_running=true" not in running.err  # the API's words, not the CLI's
    assert cli("volume", "create", "cli-rw").code == 0
    assert cli("stop", BOX).code == 0
    attached = cli("volume", "attach", "cli-rw", BOX, "/data")
    assert attached.code == 0, attached.err
    assert f"{BOX}:/data" in cli("volume", "ls").out  # the instance by name
    started = cli("start", "--wait", BOX)  # returns once Running, not at boot
    assert started.code == 0, started.err
    assert "Running" in started.out
    assert json.loads(cli("inspect", BOX).out)["state"] == "Running"
    refused = cli("snapshot", "create", BOX)
    assert refused.code == 1 and len(refused.error_lines) == 1, refused.err
    assert "'cli-rw' at /data" in refused.err and "ember volume detach" in refused.err
    assert cli("stop", BOX).code == 0
    detached = cli("volume", "detach", "cli-rw", BOX)
    assert detached.code == 0, detached.err
    assert cli("volume", "rm", "cli-rw").code == 0
    assert cli("start", "--wait", BOX).code == 0


def test_rm_needs_force_while_running_and_removes_the_ingress(
    cli: Cli, box: dict[str, object]
) -> None:
    refused = cli("rm", BOX)
    assert refused.code == 1 and "rm -f" in refused.err
    assert cli("rm", "-f", BOX).code == 0
    names = {i["name"] for i in json.loads(cli("ingress", "ls", "--json").out)}
    assert f"{BOX}-{INGRESS_PORT}" not in names
