"""Apply OCI layers, in order, to a directory: in userspace, without trusting the tars.

Each layer is a tar (plain, gzip or zstd: detected by magic bytes, not by the
media type, which registries get wrong). Whiteouts follow the OCI image spec:
`.wh.<name>` deletes `<name>` from lower layers, `.wh..wh..opq` empties a
directory of what lower layers put there. Entry names with `..` are refused.
Parent directories are resolved component by component with `lstat`, and a
symlink met on the way is followed as if the root were `/` (what Docker's
chrooted unpack, containerd and umoci do, so merged-usr `lib -> usr/lib`
works): nothing is ever written outside the root, and hard links must point
inside it.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, cast

import zstandard

from ember.errors import EmberError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
MAX_SYMLINKS = 40  # as Linux's path resolution: a loop is an error, not a hang
_XATTR_PREFIX = "SCHILY.xattr."
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_TAR_BUFFER = 1 << 20  # tarfile's stream mode reads 10 KiB at a time by default


class UnsafeLayer(EmberError):
    code = "unsafe_layer"


class CorruptLayer(EmberError):
    code = "corrupt_layer"


@dataclass
class UnpackStats:
    """How well the compressed (gzip, zstd) layers compressed: a hint for the root disk."""

    compressed: int = 0  # bytes of those layers as stored
    expanded: int = 0  # bytes they decompressed to


@contextlib.contextmanager
def _decompressed(raw: IO[bytes]) -> Iterator[tuple[IO[bytes], bool]]:
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        with gzip.GzipFile(fileobj=raw) as stream:
            yield cast(IO[bytes], stream), True
    elif magic == _ZSTD_MAGIC:
        with zstandard.ZstdDecompressor().stream_reader(raw) as zstream:
            yield zstream, True
    else:
        yield raw, False


def _relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name.lstrip("/"))
    parts = [p for p in path.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeLayer(f"layer entry {name!r} escapes the image root")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class Unpacker:
    """Apply layers one after another to `root`."""

    def __init__(self, root: Path, progress: Callable[[int], None] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._dir_times: dict[Path, tuple[float, float]] = {}
        self.stats = UnpackStats()
        self.progress = progress
        self.bytes_read = 0  # of the layer files as stored, all layers so far

    def apply(self, layer: Path) -> None:
        before = self.bytes_read
        try:
            with layer.open("rb") as raw, _decompressed(raw) as (stream, compressed):

                def read() -> None:
                    self.bytes_read = before + raw.tell()
                    if self.progress:
                        self.progress(self.bytes_read)

                with tarfile.open(fileobj=stream, mode="r|", bufsize=_TAR_BUFFER) as tar:
                    self._apply_entries(tar, read)
                if compressed:
                    self.stats.compressed += layer.stat().st_size
                    self.stats.expanded += stream.tell()
        except tarfile.ReadError as exc:
            if str(exc) != "empty file":  # a zero-byte tar stream is a layer with no entries
                raise CorruptLayer(f"layer {layer.name} is not a valid tar: {exc}") from exc
        except (gzip.BadGzipFile, zlib.error, EOFError, zstandard.ZstdError) as exc:
            raise CorruptLayer(f"layer {layer.name} cannot be decompressed: {exc}") from exc
        self.bytes_read = before + layer.stat().st_size
        if self.progress:
            self.progress(self.bytes_read)

    def _apply_entries(self, tar: tarfile.TarFile, read: Callable[[], None]) -> None:
        created: set[Path] = set()  # an opaque marker keeps this layer's own entries
        for member in tar:
            read()
            rel = _relative(member.name)
            if rel.name == OPAQUE_MARKER:
                self._make_opaque(rel.parent, created)
            elif rel.name.startswith(WHITEOUT_PREFIX):
                self._remove(rel.parent / rel.name[len(WHITEOUT_PREFIX) :])
            elif str(rel) != ".":
                created.add(self._extract(tar, member, rel))

    def finish(self) -> None:
        """Restore directory mtimes, which writing their children changed."""
        for path, times in self._dir_times.items():
            with contextlib.suppress(OSError):
                os.utime(path, times, follow_symlinks=False)

    # ---- path safety -----------------------------------------------------------------

    def _resolve_dir(self, rel_dir: PurePosixPath, create: bool) -> Path | None:
        """The real directory `rel_dir` names inside the root, symlinks followed in scope.

        Every component of the result was seen by `lstat` as a real directory, so
        the returned path crosses no symlink. Missing components are created when
        `create` is set (a non-directory in the way is replaced, as Docker does);
        otherwise None says there is nothing there.
        """
        pending = list(reversed(rel_dir.parts))
        resolved: list[str] = []
        followed = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if resolved:
                    resolved.pop()  # `..` at the root stays at the root, as in a chroot
                continue
            current = self.root.joinpath(*resolved, part)
            info = _lstat(current)
            if info is not None and stat.S_ISLNK(info.st_mode):
                followed += 1
                if followed > MAX_SYMLINKS:
                    raise UnsafeLayer(f"too many levels of symlinks in {str(rel_dir)!r}")
                target = os.readlink(current)
                if target.startswith("/"):
                    resolved = []
                pending.extend(reversed(target.split("/")))
                continue
            if info is None or not stat.S_ISDIR(info.st_mode):
                if not create:
                    return None
                if info is not None:
                    os.unlink(current)
                os.mkdir(current, 0o755)
            resolved.append(part)
        return self.root.joinpath(*resolved)

    def _target(self, rel: PurePosixPath, create: bool = True) -> Path | None:
        """Where entry `rel` lives on the host: its parent resolved, its own name not followed."""
        parent = self._resolve_dir(rel.parent, create)
        return None if parent is None else parent / rel.name

    def _remove(self, rel: PurePosixPath) -> None:
        target = self._target(rel, create=False)
        if target is not None:
            _remove_path(target)

    def _make_opaque(self, rel_dir: PurePosixPath, created: set[Path]) -> None:
        directory = self._resolve_dir(rel_dir, create=False)
        if directory is not None:
            _remove_lower(directory, created)

    # ---- extraction ------------------------------------------------------------------

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: PurePosixPath) -> Path:
        target = self._target(rel)
        assert target is not None  # created on demand
        existing = _lstat(target)
        if member.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(target)
                existing = None
            if existing is None:
                os.mkdir(target, 0o755)
            self._dir_times[target] = (member.mtime, member.mtime)
        else:
            if existing is not None:
                _remove_path(target)
            self._create(tar, member, rel, target)
        self._set_attributes(member, target)
        return target

    def _create(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: PurePosixPath, target: Path
    ) -> None:
        if member.isreg():
            source = tar.extractfile(member)
            assert source is not None
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, _TAR_BUFFER)
        elif member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            source_path = self._target(_relative(member.linkname), create=False)
            source_info = None if source_path is None else _lstat(source_path)
            if source_path is None or source_info is None or stat.S_ISDIR(source_info.st_mode):
                raise UnsafeLayer(f"hard link {str(rel)!r} points at missing {member.linkname!r}")
            os.link(source_path, target, follow_symlinks=False)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(target, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        elif member.isfifo():
            os.mkfifo(target, 0o600)
        else:
            raise UnsafeLayer(f"layer entry {str(rel)!r} has an unsupported type {member.type!r}")

    @staticmethod
    def _set_attributes(member: tarfile.TarInfo, target: Path) -> None:
        if member.islnk():
            return  # shares the inode (and attributes) of its target
        os.lchown(target, member.uid, member.gid)
        if not member.issym():
            os.chmod(target, member.mode & 0o7777)  # after chown, which clears setuid
        for key, value in member.pax_headers.items():
            if key.startswith(_XATTR_PREFIX):  # e.g. security.capability; after chown too
                with contextlib.suppress(OSError):  # a filesystem without that namespace
                    name = key[len(_XATTR_PREFIX) :]
                    data = value.encode("utf-8", "surrogateescape")
                    os.setxattr(target, name, data, follow_symlinks=False)
        if not member.issym():
            os.utime(target, (member.mtime, member.mtime))


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove_path(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _remove_lower(directory: Path, keep: set[Path]) -> None:
    """Remove everything under `directory` not in `keep`, at any depth (opaque semantics)."""
    for child in os.listdir(directory):
        path = directory / child
        if path not in keep:
            _remove_path(path)
        elif stat.S_ISDIR(os.lstat(path).st_mode):
            _remove_lower(path, keep)


def unpack_layers(
    layers: list[Path], root: Path, progress: Callable[[int], None] | None = None
) -> UnpackStats:
    """Apply `layers` in order; `progress` is told the bytes of layer files read so far."""
    unpacker = Unpacker(root, progress)
    for layer in layers:
        unpacker.apply(layer)
    unpacker.finish()
    return unpacker.stats
