"""Frame format shared with the guest agent (ember/guest/agent/agent.c).

One byte stream carries many logical channels. Each frame is a 12-byte
big-endian header ``magic u8, type u8, flags u8, reserved u8, channel u32,
length u32`` followed by ``length`` payload bytes. Nothing here depends on the
transport: virtio-serial today, vsock for other hypervisors later.

Payload encodings: guest->host control payloads are JSON objects; host->guest
control payloads are ``key=value\\0`` records (``encode_record``), which the C
agent parses without a JSON library. Data frames (stdin/stdout/file bytes)
carry raw bytes. Channel 0 is the agent itself (hello, status, ready, exit);
the host allocates other channels for requests and sessions.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

MAGIC = 0xE7
HEADER = struct.Struct(">BBBBII")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 1 << 20
CONTROL_CHANNEL = 0


class MsgType(enum.IntEnum):
    HELLO = 0x01  # host->guest: nonce; starts a connection, resets the agent's send queue
    HELLO_ACK = 0x02  # guest->host: {"nonce", "version", "status"}
    STATUS = 0x03  # host->guest request / guest->host {"state", "pid", "exit_code", ...}
    READY = 0x04  # guest->host: the workload has started
    EXIT = 0x05  # guest->host: {"exit_code", "signal", "message"}
    PING = 0x06  # host->guest: payload echoed back in PONG
    PONG = 0x07
    SIGNAL = 0x08  # host->guest: signal=N to the workload (graceful stop: 15)
    SET_TIME = 0x09  # host->guest: sec= nsec= (the wall clock after a restore); STATUS {}
    # host->guest: iface= mac= ip= prefix= gateway= dns=.. hostname= (a fork's own network,
    # applied over the one it inherited from the VM it was restored from); STATUS {}
    SET_NETWORK = 0x0A
    # host->guest: entropy=<hex> machine_id=<32 hex> hostname= (a clone's own identity: the
    # CRNG reseeded from the host's entropy, RNDADDENTROPY + RNDRESEEDCRNG); STATUS {}
    SET_IDENTITY = 0x0B
    ERROR = 0x0F  # guest->host: {"message"} answering a request on its channel
    # Requests on host-chosen channels; an exec session keeps its channel until EXEC_EXIT.
    EXEC_START = 0x10  # host->guest: arg=.. env=.. cwd= user= tty=0|1 rows= cols=
    EXEC_STARTED = 0x11  # guest->host: {"pid"}
    STDIN = 0x12  # host->guest data; flag EOF closes stdin
    STDOUT = 0x13  # guest->host data
    STDERR = 0x14  # guest->host data
    RESIZE = 0x15  # host->guest: rows= cols=
    EXEC_EXIT = 0x16  # guest->host: {"exit_code", "signal", "message"}
    CREDIT = 0x17  # either way: credit=N more data bytes may be sent on the channel
    STAT = 0x20  # host->guest: path= follow=0|1 -> STAT reply JSON
    # Reserved, unused: copies run the agent's cp-in/cp-out modes as exec sessions
    # (copy.py), so they share exec's flow control instead of needing their own.
    FILE_READ = 0x21
    FILE_WRITE = 0x22
    FILE_DATA = 0x23
    # Volumes attached to or detached from a running VM (ember/instances/mounts.py).
    MOUNT = 0x30  # host->guest: serial= path= ro=0|1 -> STATUS {} once mounted
    UNMOUNT = 0x31  # host->guest: path= -> STATUS {}, or ERROR {"message","errno"} (EBUSY)


class Flags(enum.IntFlag):
    NONE = 0
    EOF = 0x01


class ProtocolError(Exception):
    """The byte stream does not hold a valid frame."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    channel: int
    payload: bytes = b""
    flags: int = 0

    def json(self) -> dict[str, Any]:
        value = json.loads(self.payload or b"{}")
        if not isinstance(value, dict):
            raise ProtocolError(f"frame {self.type:#x} payload is not a JSON object")
        return value


def encode(frame: Frame) -> bytes:
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    header = HEADER.pack(MAGIC, frame.type, frame.flags, 0, frame.channel, len(frame.payload))
    return header + frame.payload


def encode_record(fields: Mapping[str, str | int | Iterable[str]]) -> bytes:
    """``key=value\\0`` entries; an iterable value repeats its key (argv, env)."""
    out = bytearray()
    for key, value in fields.items():
        values = [str(value)] if isinstance(value, str | int) else list(value)
        for item in values:
            if "\0" in key or "=" in key or "\0" in item:
                raise ValueError(f"record field {key!r} contains NUL or '='")
            out += f"{key}={item}".encode() + b"\0"
    return bytes(out)


class Decoder:
    """Incremental decoder: feed bytes, iterate complete frames.

    Bytes before a valid header (a stream joined mid-frame) are skipped by
    scanning for the magic byte; callers that must be certain of alignment
    wait for a HELLO_ACK carrying their nonce.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buf += data
        while len(self._buf) >= HEADER_SIZE:
            magic, mtype, flags, _, channel, length = HEADER.unpack_from(self._buf)
            if magic != MAGIC or length > MAX_PAYLOAD:
                del self._buf[0]
                continue
            end = HEADER_SIZE + length
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[HEADER_SIZE:end])
            del self._buf[:end]
            yield Frame(mtype, channel, payload, flags)
