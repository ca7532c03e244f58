"""Exec and copy over the API's WebSockets (the official client's protocols).

Exec: the first text frame is the request; then binary frames are output (stdout and
stderr merged) one way and stdin the other, a text frame `{"resize": {rows, cols}}`
resizes the TTY, and the last frame from the server is `{"exitCode": N}`.

Copy: one socket per file or directory. Into the guest: a request frame, the file's
bytes, `{"type": "end"}`, then a `result` frame. Out of the guest: a request frame,
then per entry a `header` frame, the content, and an `end` frame (`final` on the last).
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from ember.client.client import ApiError, EmberClient, error_of
from ember.client.wire import EXEC_CLOSED

CHUNK = 32 * 1024
Progress = Callable[[int], None]  # bytes moved since the last call


@contextmanager
def open_socket(api: EmberClient, ref: str, kind: str) -> Iterator[ClientConnection]:
    """A WebSocket to `/instances/{ref}/{kind}`; a refused upgrade is the ApiError the
    server's body describes (404 for an unknown instance, 401 for a bad key)."""
    url = api.websocket_url(ref, kind)
    try:
        # No permessage-deflate: the streams are mostly incompressible (server side too).
        websocket = connect(
            url, additional_headers=api.auth_headers, max_size=None, compression=None,
            open_timeout=30, close_timeout=5,
        )  # fmt: skip
    except InvalidStatus as exc:
        raise error_of(exc.response.status_code, exc.response.body or b"") from exc
    except (OSError, InvalidURI, TimeoutError) as exc:
        raise api.unreachable(exc) from exc
    with websocket:
        yield websocket


# ---- exec ------------------------------------------------------------------------------


@dataclass
class ExecRequest:
    command: list[str]
    tty: bool = False
    env: dict[str, str] | None = None
    cwd: str | None = None
    timeout: int | None = None
    rows: int | None = None
    cols: int | None = None
    wait_for_agent: int | None = None

    def encode(self) -> str:
        body: dict[str, Any] = {"command": self.command, "tty": self.tty}
        for key in ("env", "cwd", "timeout", "rows", "cols", "wait_for_agent"):
            if (value := getattr(self, key)) is not None:
                body[key] = value
        return json.dumps(body)


class ExecSession:
    """One running exec: send input and resizes (from any thread), read output frames."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.exit_code: int | None = None

    def send_input(self, data: bytes) -> None:
        self.websocket.send(data)

    def resize(self, rows: int, cols: int) -> None:
        self.websocket.send(json.dumps({"resize": {"rows": rows, "cols": cols}}))

    def end_input(self) -> None:
        """Close the process's stdin (Ember's extension of the exec protocol)."""
        self.websocket.send(json.dumps({"eof": True}))

    def output(self) -> Iterator[bytes]:
        """Output chunks until the process exits (then `exit_code` is set)."""
        while True:
            try:
                frame = self.websocket.recv()
            except ConnectionClosed as exc:
                raise ApiError(0, "exec_closed", EXEC_CLOSED) from exc
            if isinstance(frame, bytes):
                yield frame
                continue
            control = json.loads(frame)
            if isinstance(control, dict) and isinstance(control.get("exitCode"), int):
                self.exit_code = int(control["exitCode"])
                return


@contextmanager
def exec_session(api: EmberClient, ref: str, request: ExecRequest) -> Iterator[ExecSession]:
    with open_socket(api, ref, "exec") as websocket:
        websocket.send(request.encode())
        yield ExecSession(websocket)


def run_command(api: EmberClient, ref: str, command: list[str]) -> tuple[bytes, int]:
    """Run a command to its end: (merged output, exit code)."""
    with exec_session(api, ref, ExecRequest(command)) as session:
        output = b"".join(session.output())
    assert session.exit_code is not None
    return output, session.exit_code


# ---- copy into the guest ---------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    source: Path
    guest_path: str
    is_dir: bool
    mode: int
    size: int


def plan_upload(source: Path, guest_path: str) -> list[Upload]:
    """Every entry under `source` (parents first), symlinks followed for files and kept
    as empty directories for directories (the protocol has no link frame)."""
    entries: list[Upload] = []

    def visit(path: Path, remote: str) -> None:
        info = path.stat()
        is_dir = stat.S_ISDIR(info.st_mode)
        size = 0 if is_dir else info.st_size
        entries.append(Upload(path, remote, is_dir, stat.S_IMODE(info.st_mode), size))
        if is_dir and not path.is_symlink():
            for child in sorted(path.iterdir()):
                visit(child, str(PurePosixPath(remote) / child.name))

    visit(source, guest_path)
    return entries


def _upload_result(websocket: ClientConnection, entry: Upload) -> None:
    try:
        frame = websocket.recv()
    except ConnectionClosed as exc:
        raise ApiError(0, "copy_failed", f"{entry.guest_path}: the copy ended early") from exc
    message = json.loads(frame) if isinstance(frame, str) else {}
    if message.get("type") == "error" or message.get("success") is False:
        detail = message.get("message") or message.get("error") or "unknown error"
        raise ApiError(0, "copy_failed", f"{entry.guest_path}: {detail}")
    if message.get("type") != "result":
        raise ApiError(0, "copy_failed", f"{entry.guest_path}: unexpected answer {frame!r}")


def upload_entry(
    api: EmberClient, ref: str, entry: Upload, chunks: Iterable[bytes], progress: Progress | None
) -> int:
    """One file or directory into the guest over its own socket; bytes sent."""
    total = 0
    with open_socket(api, ref, "cp") as websocket:
        request = {"direction": "to", "guest_path": entry.guest_path,
                   "is_dir": entry.is_dir, "mode": entry.mode}  # fmt: skip
        websocket.send(json.dumps(request))
        for chunk in chunks:
            websocket.send(chunk)
            total += len(chunk)
            if progress:
                progress(len(chunk))
        websocket.send(json.dumps({"type": "end"}))
        _upload_result(websocket, entry)
    return total


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        yield from _read_all(file)


def _read_all(file: IO[bytes]) -> Iterator[bytes]:
    while chunk := file.read(CHUNK):
        yield chunk


def copy_to(
    api: EmberClient, ref: str, source: Path, guest_path: str, progress: Progress | None = None
) -> int:
    """Copy a local file or tree to `guest_path` (the name it gets); bytes sent."""
    return sum(
        upload_entry(api, ref, entry, () if entry.is_dir else _file_chunks(entry.source), progress)
        for entry in plan_upload(source, guest_path)
    )


def copy_tar_to(
    api: EmberClient, ref: str, stream: IO[bytes], guest_dir: str, progress: Progress | None = None
) -> int:
    """Extract a tar stream (`ember cp - NAME:DIR`, docker cp's habit) into the guest
    directory `guest_dir`: directories and regular files, in the tar's order; links and
    devices are refused by name (the copy protocol carries neither). Bytes sent."""
    total = 0
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if member.name.startswith("/") or ".." in parts:
                raise ApiError(0, "copy_failed", f"unsafe path in the tar: {member.name!r}")
            if not (member.isdir() or member.isfile()):
                raise ApiError(0, "copy_failed", f"{member.name}: only files and directories")
            target = str(PurePosixPath(guest_dir, *[p for p in parts if p != "."]))
            entry = Upload(Path(member.name), target, member.isdir(), member.mode & 0o7777,
                           member.size)  # fmt: skip
            data = tar.extractfile(member) if member.isfile() else None
            total += upload_entry(api, ref, entry, _read_all(data) if data else (), progress)
    return total


# ---- copy out of the guest -------------------------------------------------------------


class _Download:
    """Writes the entries of a copy-out under `target`: the guest sends paths relative to
    the parent of what was asked for (`file`, `dir/a`), so the first path's root is
    replaced by `target`. Files land under a temporary name, renamed when complete."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.root: str | None = None
        self.header: dict[str, Any] | None = None
        self.file: Any = None
        self.temp: Path | None = None
        self.received = 0
        self.directories: list[tuple[Path, int, int]] = []

    def local_path(self, guest_relative: str) -> Path:
        parts = PurePosixPath(guest_relative).parts
        if (
            not parts
            or any(part in ("", ".", "..") for part in parts)
            or guest_relative.startswith("/")
        ):
            raise ApiError(0, "copy_failed", f"unsafe path from the guest: {guest_relative!r}")
        if self.root is None:
            self.root = parts[0]
        if parts[0] != self.root:
            raise ApiError(0, "copy_failed", f"unexpected path from the guest: {guest_relative!r}")
        return self.target.joinpath(*parts[1:])

    def start(self, header: dict[str, Any]) -> None:
        path = self.local_path(str(header.get("path", "")))
        self.header = {**header, "local": path}
        self.received = 0
        mode = int(header.get("mode", 0o644)) & 0o7777
        if header.get("is_dir"):
            path.mkdir(parents=True, exist_ok=True)
            self.directories.append((path, mode, int(header.get("mtime", 0))))
        elif header.get("is_symlink"):
            link = str(header.get("link_target", ""))
            path.unlink(missing_ok=True)
            path.symlink_to(link)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".ember-cp-", dir=path.parent)
            self.file, self.temp = os.fdopen(fd, "wb"), Path(name)

    def data(self, chunk: bytes) -> None:
        if self.file is None or self.header is None:
            raise ApiError(0, "copy_failed", "file data arrived without a file header")
        self.file.write(chunk)
        self.received += len(chunk)

    def end(self) -> None:
        header = self.header
        if header is None:
            raise ApiError(0, "copy_failed", "an end frame arrived without a header")
        if self.file is not None and self.temp is not None:
            self.file.close()
            if self.received != int(header.get("size", 0)):
                raise ApiError(0, "copy_failed", f"{header['path']}: incomplete")
            self.temp.chmod(int(header.get("mode", 0o644)) & 0o7777)
            if mtime := int(header.get("mtime", 0)):
                os.utime(self.temp, (mtime, mtime))
            os.replace(self.temp, header["local"])
            self.file = self.temp = None
        self.header = None

    def finish(self) -> None:
        for path, mode, mtime in reversed(self.directories):  # children's times first
            path.chmod(mode)
            if mtime:
                os.utime(path, (mtime, mtime))

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


class _TarOut:
    """Writes the entries of a copy-out as a tar stream (`ember cp NAME:PATH -`, docker
    cp's habit): each header frame becomes a tar header, the content follows, padded."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.size = self.remaining = 0

    def start(self, header: dict[str, Any]) -> None:
        name = str(header.get("path", ""))
        if not name or name.startswith("/") or ".." in PurePosixPath(name).parts:
            raise ApiError(0, "copy_failed", f"unsafe path from the guest: {name!r}")
        info = tarfile.TarInfo(name)
        info.mode = int(header.get("mode", 0o644)) & 0o7777
        info.mtime = int(header.get("mtime", 0))
        if header.get("is_dir"):
            info.type = tarfile.DIRTYPE
        elif header.get("is_symlink"):
            info.type, info.linkname = tarfile.SYMTYPE, str(header.get("link_target", ""))
        else:
            info.size = int(header.get("size", 0))
        self.size = self.remaining = info.size
        self.out.write(info.tobuf(format=tarfile.PAX_FORMAT))

    def data(self, chunk: bytes) -> None:
        if len(chunk) > self.remaining:
            raise ApiError(0, "copy_failed", "more file data than its header said")
        self.out.write(chunk)
        self.remaining -= len(chunk)

    def end(self) -> None:
        if self.remaining:
            raise ApiError(0, "copy_failed", "a file ended short of its size")
        self.out.write(b"\0" * (-self.size % tarfile.BLOCKSIZE))  # content padded to blocks

    def finish(self) -> None:
        self.out.write(b"\0" * tarfile.BLOCKSIZE * 2)  # the end-of-archive marker
        self.out.flush()

    def abort(self) -> None:
        self.out.flush()


def copy_from(
    api: EmberClient, ref: str, guest_path: str, target: Path, progress: Progress | None = None
) -> int:
    """Copy a guest file or tree to the local `target` (the name it gets); bytes received."""
    return _receive(api, ref, guest_path, _Download(target), progress)


def copy_tar_from(
    api: EmberClient, ref: str, guest_path: str, out: IO[bytes], progress: Progress | None = None
) -> int:
    """Write a guest file or tree to `out` as a tar stream; bytes of content received."""
    return _receive(api, ref, guest_path, _TarOut(out), progress)


def _receive(
    api: EmberClient, ref: str, guest_path: str, sink: _Download | _TarOut,
    progress: Progress | None,
) -> int:  # fmt: skip
    total = 0
    try:
        with open_socket(api, ref, "cp") as websocket:
            request = {"direction": "from", "guest_path": guest_path, "follow_links": False}
            websocket.send(json.dumps(request))
            while True:
                try:
                    frame = websocket.recv()
                except ConnectionClosed as exc:
                    raise ApiError(0, "copy_failed", f"{guest_path}: the copy ended early") from exc
                if isinstance(frame, bytes):
                    sink.data(frame)
                    total += len(frame)
                    if progress:
                        progress(len(frame))
                    continue
                message = json.loads(frame)
                kind = message.get("type")
                if kind == "header":
                    sink.start(message)
                elif kind == "end":
                    sink.end()
                    if message.get("final"):
                        break
                elif kind == "error":
                    raise ApiError(0, "copy_failed", str(message.get("message")))
    except BaseException:
        sink.abort()
        raise
    sink.finish()
    return total
