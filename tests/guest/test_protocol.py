"""Fast checks of the host side of the guest agent protocol (no VM)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ember.errors import InvalidArgument, Unavailable
from ember.guest.client import AgentClient
from ember.guest.protocol import Decoder, Frame, MsgType, encode, encode_record


def test_frames_roundtrip_across_split_reads_and_garbage() -> None:
    frames = [Frame(MsgType.PING, 3, b"abc"), Frame(MsgType.STDIN, 7, b"", flags=1)]
    stream = b"\x00garbage" + b"".join(encode(f) for f in frames)
    decoder = Decoder()
    got = [f for i in range(len(stream)) for f in decoder.feed(stream[i : i + 1])]
    assert got == frames


def test_record_encoding_repeats_list_keys() -> None:
    assert encode_record({"arg": ["a", "b c"], "n": 5}) == b"arg=a\0arg=b c\0n=5\0"
    with pytest.raises(ValueError):
        encode_record({"arg": ["nul\0"]})


async def test_agent_exec_refusals_leave_no_session() -> None:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    client = AgentClient(reader, writer)
    client._synced.set()  # as if the agent had answered HELLO
    try:
        with pytest.raises(InvalidArgument, match="NUL"):
            await client.exec(["echo", "a\0b"])
        with pytest.raises(InvalidArgument, match="NUL"):
            await client.exec(["env"], env={"A": "x\0y"})
        with pytest.raises(Unavailable, match="did not start"):  # the agent never answers
            await client.exec(["true"], timeout=0.1)
        assert client._sessions == {}
    finally:
        await client.close()
        theirs.close()


async def test_an_agent_that_never_says_hello_is_unavailable() -> None:
    """Not a bare TimeoutError (the exec socket would drop with a traceback in the log)."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    client = AgentClient(reader, writer)
    try:
        with pytest.raises(Unavailable, match="did not answer"):
            await client.exec(["true"], timeout=0.1)
        assert client._sessions == {}
    finally:
        await client.close()
        theirs.close()
