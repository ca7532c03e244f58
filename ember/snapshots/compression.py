"""Snapshot memory compression: zstd (levels 1-19) or lz4 (0-9), in a worker thread.

Files are compressed whole as one standard frame (`zstd -d` / `lz4 -d` read
them), and decompressed sparsely: all-zero blocks become holes again, so a
1 GiB guest that touched 100 MiB comes back as a 100 MiB file, not 1 GiB.
Compression checks a cancel flag between blocks, so a restore that cannot
wait for it stops it within one block (a job of `ember.tasks.BackgroundJobs`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import lz4.frame  # type: ignore[import-untyped]
import zstandard
from pydantic import BaseModel, ConfigDict

from ember.errors import InvalidArgument
from ember.tasks import Cancelled

log = logging.getLogger("ember.snapshots")
CompressionState = Literal["none", "compressing", "compressed", "error"]
# Records a compression's state (config, compressed size, error) wherever it is kept.
RecordState = Callable[[CompressionState, "CompressionConfig | None", int | None, str | None], None]

Algorithm = Literal["zstd", "lz4"]
BLOCK = 1 << 20
_ZEROS = bytes(BLOCK)
LEVELS: dict[str, tuple[int, int, int]] = {
    "zstd": (1, 19, 1),
    "lz4": (0, 9, 0),
}  # min, max, default


class CompressionConfig(BaseModel):
    """Hypeman's `SnapshotCompressionConfig` as it comes in a request or a policy."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool
    algorithm: Algorithm | None = None
    level: int | None = None

    def resolve(self, field: str) -> Compression | None:
        """The compression to run (None: disabled); InvalidArgument naming `field`."""
        if not self.enabled:
            return None
        algorithm = self.algorithm or "zstd"
        low, high, default = LEVELS[algorithm]
        level = default if self.level is None else self.level
        if not low <= level <= high:
            raise InvalidArgument(f"{field}.level: {algorithm} levels are {low} to {high}")
        return Compression(algorithm, level)


@dataclass(frozen=True, slots=True)
class Compression:
    algorithm: Algorithm
    level: int

    @property
    def config(self) -> CompressionConfig:
        return CompressionConfig(enabled=True, algorithm=self.algorithm, level=self.level)


def parse_default(text: str) -> Compression | None:
    """The server default, "none", "zstd", "zstd:3", "lz4" or "lz4:0"."""
    if text in ("", "none"):
        return None
    algorithm, _, level = text.partition(":")
    if algorithm not in LEVELS:
        raise InvalidArgument(f"snapshot_compression: unknown algorithm {algorithm!r}")
    config = CompressionConfig(
        enabled=True,
        algorithm=algorithm,
        level=int(level) if level else None,
    )
    return config.resolve("snapshot_compression")


def compressed_name(payload: Path, algorithm: str) -> str:
    """The file name of `payload` compressed with `algorithm`: `memory.ram.zst`, `vmstate.lz4`
    (the suffixes the zstd and lz4 commands use)."""
    return f"{payload.name}.{'zst' if algorithm == 'zstd' else algorithm}"


def compress_file(src: Path, dst: Path, compression: Compression, cancel: threading.Event) -> int:
    """Compress `src` into `dst` (through a temporary name, fsynced); its size in bytes."""
    partial = dst.with_name(dst.name + ".partial")
    try:
        with open(src, "rb") as source, open(partial, "wb") as out:
            _compress(source, out, compression, cancel)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, dst)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return dst.stat().st_size


def _compress(
    source: BinaryIO, out: BinaryIO, compression: Compression, cancel: threading.Event
) -> None:
    if compression.algorithm == "zstd":
        params = zstandard.ZstdCompressor(level=compression.level, threads=-1)
        writer: BinaryIO = params.stream_writer(out, closefd=False)
    else:
        level = compression.level or 0
        writer = lz4.frame.LZ4FrameFile(out, "wb", compression_level=level)
    with writer:
        while block := source.read(BLOCK):
            if cancel.is_set():
                raise Cancelled()
            writer.write(block)


def decompress_file(src: Path, dst: Path, algorithm: Algorithm) -> None:
    """Decompress `src` into `dst` (through a temporary name), leaving zero blocks as holes."""
    partial = dst.with_name(dst.name + ".partial")
    try:
        with open(src, "rb") as compressed, open(partial, "wb") as out:
            reader: BinaryIO
            if algorithm == "zstd":
                reader = zstandard.ZstdDecompressor().stream_reader(compressed)
            else:
                reader = lz4.frame.LZ4FrameFile(compressed, "rb")
            with reader:
                size = _write_sparse(reader, out)
            out.truncate(size)
        os.replace(partial, dst)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _write_sparse(reader: BinaryIO, out: BinaryIO) -> int:
    position = 0
    while True:
        block = _read_full(reader, BLOCK)
        if not block:
            return position
        if block == _ZEROS[: len(block)]:
            out.seek(len(block), os.SEEK_CUR)
        else:
            out.write(block)
        position += len(block)


def _read_full(reader: BinaryIO, size: int) -> bytes:
    parts, left = [], size
    while left:
        part = reader.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def allocated_bytes(path: Path) -> int:
    """Bytes a (sparse) file really takes on disk."""
    return path.stat().st_blocks * 512


async def compress_recorded(
    raw: Path, target: Path, compression: Compression, cancel: threading.Event,
    record: RecordState, what: str,
) -> int | None:  # fmt: skip
    """Compress `raw` into `target` off the event loop, recording `compressing`, then `none`
    if cancelled (re-raised) or `error` if it failed (None returned); the compressed size
    otherwise. The caller records `compressed` once it has let go of the raw payload."""
    record("compressing", compression.config, None, None)
    try:
        return await asyncio.to_thread(compress_file, raw, target, compression, cancel)
    except (Cancelled, asyncio.CancelledError):
        record("none", None, None, None)
        raise
    except Exception as exc:
        log.exception("%s compression failed", what)
        record("error", compression.config, None, str(exc))
        return None
