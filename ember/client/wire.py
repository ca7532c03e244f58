"""The API over a bare socket, for the CLI's fast path: CPython's built-in modules only.

`ember ps` and `ember exec NAME CMD` are most of what people type, and their time was
mostly imports (`python -X importtime`): not only Typer, rich, httpx and websockets,
but the standard library's own `socket` (enum conversions, `selectors`), `json` (its
decoder compiles regular expressions: `re` and `enum`), `urllib.parse` (`ipaddress`)
and `http.client` (the `email` package, `ssl`): each costs more than the request. So
this module uses the C modules those wrap (`_socket`, `_json`, `_sha1`, `binascii`),
which load in well under a millisecond, and speaks just enough of each protocol:

- HTTP/1.1: one GET with `Connection: close`, the body read to the end; only a plain
  200 with a matching `Content-Length` is an answer (None for anything else: chunked,
  an error to explain). The caller then leaves the command to the full client.
- WebSocket (RFC 6455), client side: the upgrade (its `Sec-WebSocket-Accept` checked),
  masked frames out, frames in (pings answered), the closing handshake. No extensions
  (permessage-deflate is off on both sides, as in `streams.py`).

Only plain `http://HOST[:PORT][/PATH]` base URLs; anything else is None too.
"""

from __future__ import annotations

import _socket
import os
from _json import encode_basestring_ascii, make_scanner

TYPE_CHECKING = False  # not `typing`'s: importing it costs the fast path ~5 ms
if TYPE_CHECKING:
    from typing import Any

TIMEOUT = 60.0
# What the exec protocol's client says when the stream ends before the exit code.
EXEC_CLOSED = "the exec stream ended without an exit code"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


class _Decoding:
    """The settings `json.JSONDecoder()` gives its C scanner (json's defaults)."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int, parse_constant = float, int, float  # float("-Infinity") works


# The stub types the context as a scanner; the C code reads only the attributes above.
_scan = make_scanner(_Decoding())  # type: ignore[arg-type]


def loads(text: str) -> Any:
    """`json.loads(text)` for a str, with json's own C scanner."""
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError("not JSON") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError("extra data after the JSON value")
    return value


def dumps_strings(items: list[str]) -> str:
    """`json.dumps(items)` for a list of strings."""
    return "[" + ", ".join(encode_basestring_ascii(item) for item in items) + "]"


def split_url(base_url: str) -> tuple[str, int, str] | None:
    """(host, port, path) of a plain `http://HOST[:PORT][/PATH]`, else None (IPv6
    literals, user info, a query, a name that is not ASCII: the full client reads those)."""
    scheme, _, rest = base_url.partition("://")
    netloc, slash, path = rest.partition("/")
    host, _, port = netloc.partition(":")
    port = port or "80"
    if scheme != "http" or not (host.isascii() and host and port.isdigit()):
        return None
    if any(c in rest for c in "[@?#"):
        return None
    return host.lower(), int(port), (slash + path).rstrip("/")


def _connect(host: str, port: int) -> _socket.socket:
    """A connected TCP socket (each address in turn, as `socket.create_connection`)."""
    error: OSError = OSError(f"no address for {host}")
    # The name as bytes: a str is encoded with the IDNA codec, whose import (`re`,
    # `stringprep`) costs more than the request. `split_url` passes ASCII names only.
    for family, kind, proto, _, address in _socket.getaddrinfo(host.encode(), port, 0, 1):
        sock = _socket.socket(family, kind, proto)
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def _request(host: str, port: int, target: str, headers: dict[str, str]) -> _socket.socket:
    sock = _connect(host, port)
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{fields}\r\n".encode())
    return sock


def _head(data: bytes) -> tuple[str, dict[str, str]]:
    """The status code and the fields (names in lower case) of an answer's head."""
    status, *fields = data.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in
               (field.partition(":") for field in fields)}  # fmt: skip
    return "".join(status.split(" ")[1:2]), headers


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def get_json(base_url: str, path: str, token: str | None) -> Any:
    """The JSON of a plain 200 answer to GET `path`, or None for anything else."""
    where = split_url(base_url)
    if where is None:
        return None
    host, port, prefix = where
    headers = _auth(token) | {"Accept": "application/json", "Connection": "close"}
    try:
        sock = _request(host, port, prefix + path, headers)
        try:
            answer = b"".join(iter(lambda: sock.recv(1 << 16), b""))
        finally:
            sock.close()
    except OSError:
        return None
    head, _, body = answer.partition(b"\r\n\r\n")
    status, fields = _head(head)
    if status != "200" or fields.get("content-length") != str(len(body)):
        return None
    try:
        return loads(body.decode())
    except ValueError:
        return None


class WebSocket:
    """A client WebSocket on a connected socket, after the upgrade."""

    def __init__(self, sock: _socket.socket, buffered: bytes) -> None:
        self.sock, self.buffer = sock, buffered

    def send(self, opcode: int, payload: bytes) -> None:
        """One final frame, masked as a client's must be."""
        size = len(payload)
        if size < 126:
            head = bytes((0x80 | opcode, 0x80 | size))
        elif size < 1 << 16:
            head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
        mask = os.urandom(4)
        self.sock.sendall(head + mask + _masked(payload, mask))

    def receive(self) -> tuple[int, bytes] | None:
        """The next message (opcode, payload), pings answered on the way; None when the
        connection closes (a close frame, which is answered, or the end of the stream)."""
        opcode, parts = 0, list[bytes]()
        while True:
            frame = self._frame()
            if frame is None:
                return None
            fin, code, payload = frame
            if code == PING:
                self.send(PONG, payload)
            elif code == CLOSE:
                self.send(CLOSE, payload[:2])
                return None
            elif code != PONG:
                opcode, parts = opcode or code, [*parts, payload]
                if fin:
                    return opcode, b"".join(parts)

    def close(self) -> None:
        self.sock.close()

    def _frame(self) -> tuple[bool, int, bytes] | None:
        head = self._read(2)
        if head is None:
            return None
        size = head[1] & 0x7F
        if size >= 126:
            extended = self._read(2 if size == 126 else 8)
            if extended is None:
                return None
            size = int.from_bytes(extended, "big")
        mask = self._read(4) if head[1] & 0x80 else b""
        payload = self._read(size)
        if mask is None or payload is None:
            return None
        return bool(head[0] & 0x80), head[0] & 0x0F, _masked(payload, mask) if mask else payload

    def _read(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def _masked(payload: bytes, mask: bytes) -> bytes:
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def open_websocket(base_url: str, path: str, token: str | None) -> WebSocket | None:
    """A WebSocket to `path`, or None when there is no such answer (refused, an error
    status: the full client says why)."""
    where = split_url(base_url)
    if where is None:
        return None
    host, port, prefix = where
    from _sha1 import sha1  # type: ignore[import-not-found]  # hashlib's own; no stub
    from binascii import b2a_base64

    key = b2a_base64(os.urandom(16), newline=False).decode()
    headers = _auth(token) | {"Upgrade": "websocket", "Connection": "Upgrade",
                              "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}  # fmt: skip
    try:
        sock = _request(host, port, prefix + path, headers)
    except OSError:
        return None
    answer = b""
    try:
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(1 << 16)):
            answer += chunk
    except OSError:
        answer = b""
    head, end, rest = answer.partition(b"\r\n\r\n")
    status, fields = _head(head) if end else ("", {})
    accept = b2a_base64(sha1(key.encode() + WS_GUID).digest(), newline=False).decode()
    if status != "101" or fields.get("sec-websocket-accept") != accept:
        sock.close()
        return None
    sock.settimeout(None)  # a command may be silent for long (the server pings meanwhile)
    return WebSocket(sock, rest)
