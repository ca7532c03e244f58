"""Just enough HTTP/1.x for the proxy: read one request head, rewrite its headers,
and copy its body (Content-Length or chunked) so the next request is found.

Responses are not parsed: the proxy copies them back byte for byte.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024
_COPY = 64 * 1024


class BadRequest(Exception):
    pass


@dataclass
class RequestHead:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    @property
    def host(self) -> str | None:
        """The Host header's name, without port (brackets of an IPv6 literal removed)."""
        value = self.get("host")
        if not value:
            return None
        if value.startswith("["):
            return value[1:].split("]", 1)[0]
        return value.rsplit(":", 1)[0] if value.count(":") == 1 else value

    def set(self, name: str, value: str) -> None:
        """Replace every header of this name with one (added when missing)."""
        lowered = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lowered]
        self.headers.append((name, value))

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.target} {self.version}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_head(reader: asyncio.StreamReader) -> RequestHead | None:
    """The next request head; None when the client closed between requests."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadRequest("the request head was cut off") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadRequest("the request head is too large") from exc
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    head = RequestHead(parts[0], parts[1], parts[2])
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line: {line[:80]!r}")
        head.headers.append((name, value.strip()))
    return head


def looks_like_http(data: bytes) -> bool:
    """Whether a connection's first bytes are an HTTP/1.x request line's method."""
    method = data.split(b" ", 1)[0]
    return method in {b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH",
                      b"CONNECT", b"TRACE"}  # fmt: skip


async def copy_body(
    head: RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy the request's body as framed by its headers (none when neither is given)."""
    encoding = (head.get("transfer-encoding") or "").lower()
    if "chunked" in encoding:
        await _copy_chunked(reader, writer)
        return
    length = head.get("content-length")
    if length is None:
        return
    if not length.isdigit():
        raise BadRequest(f"bad Content-Length {length!r}")
    await _copy_exact(int(length), reader, writer)


async def _copy_exact(
    count: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while count > 0:
        chunk = await reader.read(min(count, _COPY))
        if not chunk:
            raise BadRequest("the request body was cut off")
        writer.write(chunk)
        count -= len(chunk)
        await writer.drain()


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise BadRequest("bad chunk size") from exc
        if size == 0:
            break
        await _copy_exact(size + 2, reader, writer)  # the chunk and its CRLF
    while True:  # trailers, up to the empty line
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        if line == b"\r\n":
            break
    await writer.drain()


_REASONS = {403: "Forbidden", 502: "Bad Gateway"}


def refusal(reason: str, status: int = 403) -> bytes:
    """An HTTP answer whose body says why (the program inside reads it)."""
    body = f"ember egress: refused: {reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"X-Ember-Egress: refused\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
