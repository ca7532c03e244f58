"""exec, cp, stat and stats against a real VM, through the official client's helpers."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypeman import BadRequestError, ConflictError, Hypeman
from hypeman.lib.cp import CopyProtocolError, cp_from_instance, cp_to_instance
from hypeman.lib.exec import exec as hm_exec
from hypeman.lib.exec import exec_async
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from ember.testkit.ember_server import EmberServer

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def client(shared_server: EmberServer) -> Hypeman:
    return Hypeman(base_url=shared_server.url, api_key=shared_server.token(), max_retries=0)


@pytest.fixture(scope="module")
def vm(client: Hypeman, hello: str) -> Iterator[str]:
    inst = client.instances.create(
        name="inside", image=hello, vcpus=1, size="512MB", cmd=["/hello", "serve", "8080"],
        env={"FROM_IMAGE_RUN": "yes"},
    )  # fmt: skip
    assert client.instances.wait(inst.id, state="Running", api_timeout="120s").state == "Running"
    yield inst.id
    client.instances.delete(inst.id)


def test_exit_codes_env_cwd_and_stdin(client: Hypeman, vm: str) -> None:
    assert hm_exec(client, vm, ["true"], wait_for_agent=30).exit_code == 0
    assert hm_exec(client, vm, ["sh", "-c", "exit 7"]).exit_code == 7
    missing = hm_exec(client, vm, ["/no/such/binary"])
    assert (missing.exit_code, missing.output) == (127, b"command not found: /no/such/binary\r\n")
    result = hm_exec(client, vm, ["sh", "-c", "echo $GREETING; pwd"], env={"GREETING": "hi"},
                     cwd="/tmp")  # fmt: skip
    assert result.output == b"hi\n/tmp\n"
    echoed = hm_exec(client, vm, ["head", "-c", "11"], stdin=b"hello world and more")
    assert (echoed.exit_code, echoed.output) == (0, b"hello world")
    timed_out = hm_exec(client, vm, ["sleep", "30"], timeout=1)
    assert timed_out.exit_code == 124
    merged = hm_exec(client, vm, ["sh", "-c", "echo out; echo err >&2"])
    assert sorted(merged.output.split()) == [b"err", b"out"]


def test_stdin_larger_than_the_flow_control_window(client: Hypeman, vm: str) -> None:
    data = os.urandom(3 * 1024 * 1024)  # twelve times the agent's 256 KiB window
    command = ["sh", "-c", f"head -c {len(data)} | sha256sum"]
    result = hm_exec(client, vm, command, stdin=data)
    assert result.output.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_refusals_before_the_upgrade(client: Hypeman, vm: str) -> None:
    with pytest.raises(InvalidStatus) as missing:
        hm_exec(client, "no-such-instance", ["true"])
    assert missing.value.response.status_code == 404
    stranger = client.with_options(api_key="not-a-token")
    with pytest.raises(InvalidStatus) as unauthorized:
        hm_exec(stranger, vm, ["true"])
    assert unauthorized.value.response.status_code == 401


def test_a_socket_that_never_sends_its_request_is_closed(
    shared_server: EmberServer, vm: str
) -> None:
    """Both sockets wait together; each is closed with 1008 and the reason (after
    EMBER_WEBSOCKET_FIRST_MESSAGE_SECONDS, 10 s by default), not held open."""
    headers = {"Authorization": f"Bearer {shared_server.token()}"}
    base = shared_server.url.replace("http://", "ws://")
    sockets = [connect(f"{base}/instances/{vm}/{kind}", additional_headers=headers)
               for kind in ("exec", "cp")]  # fmt: skip
    for socket in sockets:
        with socket, pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=120)  # only so a broken server cannot hang the test
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert "first message must be the JSON request" in closed.value.rcvd.reason


def test_tty_and_resize(client: Hypeman, vm: str) -> None:
    result = hm_exec(client, vm, ["sh", "-c", "test -t 0 && echo tty; stty size"], tty=True,
                     rows=33, cols=101)  # fmt: skip
    assert b"tty" in result.output and b"33 101" in result.output
    resized = hm_exec(
        client, vm, ["sh", "-c", "sleep 1; stty size"], tty=True, rows=10, cols=20,
        resize=[(50, 120)],
    )  # fmt: skip
    assert b"50 120" in resized.output


def test_large_output_streams_intact(client: Hypeman, vm: str) -> None:
    size = 50 * 1024 * 1024
    result = hm_exec(client, vm, ["sh", "-c", f"head -c {size} /dev/urandom > /tmp/big"])
    assert result.exit_code == 0
    streamed = hm_exec(client, vm, ["cat", "/tmp/big"])
    assert len(streamed.output) == size
    expected = hm_exec(client, vm, ["sha256sum", "/tmp/big"]).output.split()[0].decode()
    assert hashlib.sha256(streamed.output).hexdigest() == expected


def test_concurrent_execs(client: Hypeman, vm: str) -> None:
    async def run_all() -> list[tuple[int, bytes]]:
        runs = [exec_async(client, vm, ["sh", "-c", f"sleep 0.2; echo {i}; exit {i % 5}"])
                for i in range(20)]  # fmt: skip
        return [(r.exit_code, r.output) for r in await asyncio.gather(*runs)]

    results = asyncio.run(run_all())
    assert results == [(i % 5, f"{i}\n".encode()) for i in range(20)]


def test_copy_tree_both_ways(client: Hypeman, vm: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "run.sh").write_text("#!/bin/sh\necho run\n")
    (tree / "run.sh").chmod(0o750)
    (tree / "sub" / "deeper" / "data.bin").write_bytes(os.urandom(300_000))
    (tree / "link").symlink_to("a.txt")
    cp_to_instance(client, vm, tree, "/srv/tree")
    listed = hm_exec(client, vm, ["sh", "-c", "cd /srv/tree && ls -l run.sh && cat a.txt"])
    assert b"-rwxr-x---" in listed.output and b"alpha" in listed.output
    assert hm_exec(client, vm, ["/srv/tree/run.sh"]).output == b"run\n"
    hm_exec(client, vm, ["sh", "-c", "ln -s a.txt /srv/tree/guest-link"])

    back = tmp_path / "back"
    cp_from_instance(client, vm, "/srv/tree", back)
    copied = back / "tree"
    assert (copied / "a.txt").read_text() == "alpha\n"
    assert (copied / "run.sh").stat().st_mode & 0o777 == 0o750
    data = (tree / "sub" / "deeper" / "data.bin").read_bytes()
    assert (copied / "sub" / "deeper" / "data.bin").read_bytes() == data
    assert (copied / "guest-link").readlink() == Path("a.txt")  # links come out as links
    assert not (copied / "link").is_symlink()  # the client uploads what a link points to


def test_copy_single_files_and_errors(client: Hypeman, vm: str, tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_bytes(b"one file\n")
    source.chmod(0o600)
    cp_to_instance(client, vm, source, "/srv/new/parent/notes.txt")
    info = client.instances.stat(vm, path="/srv/new/parent/notes.txt")
    assert (info.is_file, info.mode, info.size) == (True, 0o600, 9)
    cp_from_instance(client, vm, "/srv/new/parent/notes.txt", tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_bytes() == b"one file\n"
    with pytest.raises(CopyProtocolError, match="No such file"):
        cp_from_instance(client, vm, "/does/not/exist", tmp_path / "nothing")
    with pytest.raises(CopyProtocolError, match="Not a directory"):
        cp_to_instance(client, vm, source, "/srv/new/parent/notes.txt/inside")


def test_stat(client: Hypeman, vm: str) -> None:
    hm_exec(client, vm, ["sh", "-c", "mkdir -p /s && echo x > /s/f && ln -sf f /s/l"])
    file_info = client.instances.stat(vm, path="/s/f")
    assert file_info.exists and file_info.is_file and file_info.size == 2
    assert client.instances.stat(vm, path="/s").is_dir
    link = client.instances.stat(vm, path="/s/l")
    assert link.is_symlink and link.link_target == "f"
    followed = client.instances.stat(vm, path="/s/l", follow_links=True)
    assert followed.is_file and not followed.is_symlink
    missing = client.instances.stat(vm, path="/nope")
    assert not missing.exists and missing.error is None


def test_stats(client: Hypeman, vm: str) -> None:
    stats = client.instances.stats(vm)
    assert stats.instance_id == vm and stats.allocated_vcpus == 1
    assert stats.allocated_memory_bytes == 512 * 1024 * 1024
    assert stats.cpu_seconds > 0 and stats.memory_rss_bytes > 0
    assert 0 < (stats.memory_utilization_ratio or 0) <= 1.5


def test_skip_guest_agent_is_refused_clearly(client: Hypeman, hello: str, tmp_path: Path) -> None:
    inst = client.instances.create(
        name="agentless", image=hello, vcpus=1, size="256MB", skip_guest_agent=True,
        cmd=["/hello", "serve", "80"],
    )  # fmt: skip
    try:
        with pytest.raises(ConflictError, match="skip_guest_agent"):
            client.instances.stat(inst.id, path="/")
        with pytest.raises(InvalidStatus) as refused:
            hm_exec(client, inst.id, ["true"])
        assert refused.value.response.status_code == 409
        assert b"skip_guest_agent" in refused.value.response.body
        with pytest.raises(InvalidStatus) as copy_refused:
            cp_from_instance(client, inst.id, "/hello", tmp_path)
        assert copy_refused.value.response.status_code == 409
    finally:
        client.instances.delete(inst.id)


@pytest.mark.parametrize(
    ("command", "env", "cwd", "reason"),
    [
        (["echo", "a\0b"], None, None, "command[1]: 'a\\x00b' contains a NUL byte"),
        (["env"], {"A": "x\0y"}, None, "env: environment variable A contains a NUL byte"),
        (["env"], {"A=B": "1"}, None, "env: invalid environment variable name 'A=B'"),
        (["env"], {"": "1"}, None, "env: invalid environment variable name ''"),
        (["pwd"], None, "/tmp\0x", "cwd: '/tmp\\x00x' contains a NUL byte"),
    ],
)
def test_exec_refuses_what_the_guest_cannot_take(
    client: Hypeman,
    vm: str,
    command: list[str],
    env: dict[str, str] | None,
    cwd: str | None,
    reason: str,
) -> None:
    # The same rule (and message) as instance create; told as the protocol's error output.
    result = hm_exec(client, vm, command, env=env, cwd=cwd, wait_for_agent=30)
    assert result.exit_code == 127
    assert result.output.decode() == f"Error: {reason}\r\n"
    assert hm_exec(client, vm, ["echo", "still fine"]).output == b"still fine\n"


def test_create_refuses_the_same_env_names(client: Hypeman, hello: str) -> None:
    with pytest.raises(BadRequestError, match="invalid environment variable name 'A=B'"):
        client.instances.create(name="bad-env", image=hello, size="256MB", env={"A=B": "1"})
