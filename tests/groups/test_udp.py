"""The UDP path over stand-in guests that echo datagrams on loopback addresses: a
client's datagrams are one flow to one instance; a burst of clients to an asleep group
wakes it once and every datagram held meanwhile is answered; the hard limit drops a
flow it cannot place; a flow is activity until it has been idle."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from ember.instances import State
from tests.groups.test_tcp import UDP_IDLE, tcp_group


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.answers.put_nowait(data)


async def client(port: int) -> tuple[asyncio.DatagramTransport, Client]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Client, remote_addr=("127.0.0.1", port), family=socket.AF_INET
    )
    return transport, protocol


async def ask(port: int, text: bytes, timeout: float = 10) -> bytes | None:
    """One datagram from a new client address; its answer, or None."""
    transport, protocol = await client(port)
    try:
        transport.sendto(text)
        return await asyncio.wait_for(protocol.answers.get(), timeout)
    except TimeoutError:
        return None
    finally:
        transport.close()


def test_a_burst_to_an_asleep_udp_group_wakes_it_once_and_is_answered(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[bytes | None], int, dict[str, int]]:
        async with tcp_group(tmp_path, {"a": State.STANDBY}, protocol="udp") as (m, guests, port):
            texts = [f"ping {n}".encode() for n in range(5)]
            answers = await asyncio.gather(*(ask(port, text) for text in texts))
            return answers, guests.restores, m.l4.connections()

    answers, restores, flows = asyncio.run(scenario())
    assert answers == [f"ping {n}".encode() for n in range(5)]
    assert restores == 1 and flows == {"127.0.0.2:7000": 5}  # five flows until idle


def test_the_hard_limit_drops_a_flow_and_an_idle_flow_frees_its_place(tmp_path: Path) -> None:
    async def scenario() -> tuple[bytes | None, bytes | None, bytes | None, list[str]]:
        names = {"a": State.RUNNING}
        async with tcp_group(tmp_path, names, protocol="udp", hard_limit=1) as (m, guests, port):
            first = await ask(port, b"one")
            refused = await ask(port, b"two", timeout=UDP_IDLE / 2)  # "one" holds the place
            await asyncio.sleep(UDP_IDLE * 2)  # every flow idle: ended
            await m._pass()
            asleep = list(guests.standbys)
            later = await ask(port, b"three")
            return first, refused, later, asleep

    first, refused, later, asleep = asyncio.run(scenario())
    assert (first, refused, later) == (b"one", None, b"three")
    assert asleep == ["id-a"]  # idle flows are no activity: cooldown 0 put it to sleep


def test_an_open_flow_keeps_its_instance_awake(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        async with tcp_group(tmp_path, {"a": State.RUNNING}, protocol="udp") as (m, guests, port):
            transport, protocol = await client(port)
            for _ in range(4):  # a datagram every UDP_IDLE / 2: never idle
                transport.sendto(b"tick")
                await asyncio.wait_for(protocol.answers.get(), 10)
                await m._pass()
                await asyncio.sleep(UDP_IDLE / 2)
            transport.close()
            return guests.standbys

    assert asyncio.run(scenario()) == []
