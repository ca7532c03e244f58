"""Build tar.gz archives in memory, including hostile ones, for the volume tests."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    size: int | None = None  # declared size, when the data is streamed (bombs)
    uid: int = 0
    gid: int = 0


def make_archive(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.type
            info.linkname = entry.linkname
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            info.size = len(entry.data) if entry.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(entry.data) if entry.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def zero_bomb(size: int, name: str = "zeros") -> bytes:
    """One file of ``size`` zero bytes, gzipped as a stream (never held in memory)."""
    out = io.BytesIO()
    info = tarfile.TarInfo(name)
    info.size = size
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz:
        gz.write(info.tobuf(format=tarfile.GNU_FORMAT))
        chunk = bytes(1 << 20)
        left = size
        while left:
            n = min(left, len(chunk))
            gz.write(chunk[:n])
            left -= n
        gz.write(bytes(-size % 512 + 1024))  # padding and the two end blocks
    return out.getvalue()


async def body(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    """The archive as the request body arrives: in chunks."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
