"""The fast path's own HTTP and WebSocket client (`ember.client.wire`) and `ember exec` on
it, against a real WebSocket server (the `websockets` library) on loopback: JSON read as
`json` reads it, the exec request byte for byte as `ember.client.streams` writes it,
pings, fragments and large frames, and the failures the full CLI must explain."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.http11 import Response
from websockets.sync.server import ServerConnection, serve

from ember.cli import fast
from ember.client.streams import ExecRequest
from ember.client.wire import dumps_strings, loads, split_url

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(JSON, st.sampled_from([None, 2]))
def test_loads_reads_what_json_reads(value: Any, indent: int | None) -> None:
    text = json.dumps(value, indent=indent)
    assert loads(f" {text}\n") == json.loads(text)


@pytest.mark.parametrize("text", ["", "{", "[1] 2", "nope", '{"a": 1,}'])
def test_loads_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        loads(text)


@given(st.lists(st.text()))
def test_a_command_is_written_as_json_writes_it(command: list[str]) -> None:
    assert dumps_strings(command) == json.dumps(command)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:4973", ("127.0.0.1", 4973, "")),
        ("http://LocalHost/", ("localhost", 80, "")),
        ("http://host:8080/base/", ("host", 8080, "/base")),
        ("https://host", None),
        ("http://[::1]:4973", None),
        ("http://user@host", None),
        ("http://h\u00e9te", None),
        ("http://host:port", None),
        ("http://:80", None),
    ],
)
def test_only_plain_http_urls_take_the_fast_path(
    url: str, expected: tuple[str, int, str] | None
) -> None:
    assert split_url(url) == expected


Handler = Callable[[ServerConnection], None]


@contextmanager
def exec_server(handler: Handler, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A WebSocket server on loopback that answers `/instances/box/exec` with `handler`
    (anything else: 404); yields the requests it was sent. The CLI's environment names it."""
    requests: list[str] = []

    def refuse(connection: ServerConnection, request: Any) -> Response | None:
        if request.path != "/instances/box/exec":
            return connection.respond(404, '{"code":"not_found","message":"no such"}\n')
        assert request.headers["Authorization"] == "Bearer key"
        return None

    def handle(connection: ServerConnection) -> None:
        requests.append(str(connection.recv()))
        handler(connection)

    with serve(handle, "127.0.0.1", 0, process_request=refuse, compression=None) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        monkeypatch.setenv("EMBER_BASE_URL", f"http://127.0.0.1:{server.socket.getsockname()[1]}")
        monkeypatch.setenv("EMBER_API_KEY", "key")
        try:
            yield requests
        finally:
            server.shutdown()


def test_exec_relays_output_and_exits_with_the_code(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    big = b"x" * 200_000  # a 64-bit length

    def answer(connection: ServerConnection) -> None:
        connection.ping(b"are you there")
        connection.send(b"out 1\n")
        connection.send([b"frag", b"mented\n"])  # one message in three frames
        connection.send(big)
        connection.send(['{"exitCode"', ": 3}"])  # a fragmented text message
        connection.close()

    with exec_server(answer, monkeypatch) as requests:
        code = fast.run(["exec", "box", "--", "/bin/sh", "-c", "echo ü"])
    assert code == 3
    assert capfd.readouterr().out == "out 1\nfragmented\n" + "x" * 200_000
    # The request exactly as the full client writes it.
    assert requests == [ExecRequest(["/bin/sh", "-c", "echo ü"]).encode()]


def test_an_exec_stream_that_ends_early_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    def answer(connection: ServerConnection) -> None:
        connection.send(b"partial")
        connection.close()

    with exec_server(answer, monkeypatch):
        code = fast.run(["exec", "box", "true"])
    assert code == 125
    out, err = capfd.readouterr()
    assert out == "partial"
    assert err.strip() == "error: the exec stream ended without an exit code"


def test_exec_leaves_to_the_full_cli_what_it_cannot_say_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused upgrade (its error is the full CLI's to explain), options, a name to
    quote, no command: None, and nothing was run."""
    with exec_server(lambda connection: None, monkeypatch) as requests:
        for argv in (
            ["exec", "missing", "true"],
            ["exec", "-i", "box", "cat"],
            ["exec", "-e", "A=1", "box", "env"],
            ["exec", "b/x", "true"],
            ["exec", "box"],
            ["exec", "box", "--"],
            ["exec", "--", "box", "true"],
        ):
            assert fast.run(argv) is None, argv
        assert requests == []


def test_output_to_a_closed_pipe_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """`ember exec ... | head -1`: said as the full CLI says it (125, the OS's words)."""

    def answer(connection: ServerConnection) -> None:
        connection.send(b"output nobody reads")
        connection.send('{"exitCode": 0}')
        connection.close()

    read, write = os.pipe()
    os.close(read)
    stdout = os.dup(1)
    os.dup2(write, 1)
    try:
        with exec_server(answer, monkeypatch):
            code = fast.run(["exec", "box", "yes"])
    finally:
        os.dup2(stdout, 1)
        os.close(stdout)
        os.close(write)
    assert code == 125
    assert capfd.readouterr().err.strip() == "error: Broken pipe"
