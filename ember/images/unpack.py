"""Apply OCI layers, in order, to a directory: in userspace, without trusting the tars.

Each layer is a tar (plain, gzip or zstd: detected by magic bytes, not by the
media type, which registries get wrong). Whiteouts follow the OCI image spec:
`.wh.<name>` deletes `<name>` from lower layers, `.wh..wh..opq` empties a
directory of what lower layers put there. Every path is resolved component by
component with `lstat`, so an entry can never write through a symlink or `..`
out of the root, and hard links must point inside it.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, cast

import zstandard

from ember.errors import EmberError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class UnsafeLayer(EmberError):
    code = "unsafe_layer"


@contextlib.contextmanager
def open_layer(path: Path) -> Iterator[IO[bytes]]:
    """The layer's uncompressed tar stream, whatever its compression."""
    with path.open("rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(_GZIP_MAGIC):
            with gzip.GzipFile(fileobj=raw) as stream:
                yield cast(IO[bytes], stream)
        elif magic == _ZSTD_MAGIC:
            with zstandard.ZstdDecompressor().stream_reader(raw) as zstream:
                yield zstream
        else:
            yield raw


def _relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name.lstrip("/"))
    parts = [p for p in path.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeLayer(f"layer entry {name!r} escapes the image root")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class Unpacker:
    """Apply layers one after another to `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._dir_times: dict[Path, tuple[float, float]] = {}

    def apply(self, layer: Path) -> None:
        created: set[PurePosixPath] = set()  # opaque markers keep this layer's own entries
        with open_layer(layer) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                rel = _relative(member.name)
                if rel.name == OPAQUE_MARKER:
                    self._make_opaque(rel.parent, created)
                elif rel.name.startswith(WHITEOUT_PREFIX):
                    self._remove(rel.parent / rel.name[len(WHITEOUT_PREFIX) :])
                elif str(rel) != ".":
                    self._extract(tar, member, rel)
                    created.add(rel)

    def finish(self) -> None:
        """Restore directory mtimes, which writing their children changed."""
        for path, times in self._dir_times.items():
            with contextlib.suppress(OSError):
                os.utime(path, times, follow_symlinks=False)

    # ---- path safety -----------------------------------------------------------------

    def _parent(self, rel: PurePosixPath) -> Path:
        """The host directory that will hold `rel`, created as needed, never via a symlink."""
        current = self.root
        for part in rel.parent.parts:
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                os.mkdir(current, 0o755)
                continue
            if stat.S_ISLNK(mode):
                raise UnsafeLayer(f"layer entry {str(rel)!r} would be written through a symlink")
            if not stat.S_ISDIR(mode):
                os.unlink(current)
                os.mkdir(current, 0o755)
        return current

    def _remove(self, rel: PurePosixPath) -> None:
        target = self._parent(rel) / rel.name
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(target).st_mode):
                shutil.rmtree(target)
            else:
                os.unlink(target)

    def _make_opaque(self, rel_dir: PurePosixPath, created: set[PurePosixPath]) -> None:
        directory = self.root if str(rel_dir) == "." else self._parent(rel_dir) / rel_dir.name
        if not directory.is_dir() or directory.is_symlink():
            return
        for child in os.listdir(directory):
            if rel_dir / child not in created:
                self._remove(rel_dir / child)

    # ---- extraction ------------------------------------------------------------------

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: PurePosixPath) -> None:
        target = self._parent(rel) / rel.name
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
                self._remove(rel)
            self._create(tar, member, rel, target)
        self._set_attributes(member, target)

    def _create(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: PurePosixPath, target: Path
    ) -> None:
        if member.isreg():
            source = tar.extractfile(member)
            assert source is not None
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        elif member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            link_rel = _relative(member.linkname)
            source_path = self._parent(link_rel) / link_rel.name
            if _lstat(source_path) is None:
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
            os.utime(target, (member.mtime, member.mtime))


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def unpack_layers(layers: list[Path], root: Path) -> None:
    unpacker = Unpacker(root)
    for layer in layers:
        unpacker.apply(layer)
    unpacker.finish()
