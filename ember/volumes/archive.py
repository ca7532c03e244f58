"""Safe extraction of a volume's tar.gz archive into a private staging directory.

Every member is checked before a byte of it is written:

- names: relative, no ``..`` component, no NUL; the real path (following any
  symlink the archive already created) stays inside the staging directory;
- types: files, directories, symlinks and hard links only (no device nodes,
  FIFOs or anything else);
- symlinks: a relative target that stays inside the volume (absolute targets
  and targets climbing above the volume root are refused);
- hard links: to a regular file this archive already extracted;
- size: the space a member will take on ext4 (blocks, not bytes) and its inode
  are added to running totals *from the headers*, in a first pass over the
  archive that writes nothing (`_survey`): a 1 GB zero-filled file against a 1 GB
  volume, or more entries than the volume has inodes, is refused before a file
  is created; the stream itself is also capped, and so is every header (a pax
  header is read into memory whole).

Ownership (numeric uid/gid) and modes are kept: the staging directory is private
to root on the host, and the guest is where those bits mean something.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ember.errors import InvalidArgument
from ember.units import format_size

BLOCK = 4096
INODE = 256  # bytes of inode table per entry: counts towards the budget
HEADER_WINDOW = 8 << 20  # bytes a single header (pax, GNU long name) may take to read
_READ_CHUNK = 1 << 20


class ArchiveTooLarge(InvalidArgument):
    code = "archive_too_large"


class UnsafeArchive(InvalidArgument):
    code = "unsafe_archive"


class InvalidArchive(InvalidArgument):
    code = "invalid_archive"


@dataclass(frozen=True, slots=True)
class Budget:
    """What the volume's empty filesystem can hold: free data bytes and free inodes."""

    bytes: int
    inodes: int
    size_gb: int  # for messages


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _CappedReader:
    """The decompressed tar stream, counted: bounds the whole stream and each header."""

    def __init__(self, raw: _Readable, limit: int, size_gb: int) -> None:
        self.raw, self.limit, self.size_gb = raw, limit, size_gb
        self.total = 0
        self.window_end: int | None = None

    def header_phase(self) -> None:
        self.window_end = self.total + HEADER_WINDOW

    def data_phase(self) -> None:
        self.window_end = None

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(_READ_CHUNK if n is None or n < 0 else n)
        self.total += len(data)
        if self.window_end is not None and self.total > self.window_end:
            raise UnsafeArchive(
                f"archive: a header larger than {format_size(HEADER_WINDOW)} (refused)"
            )
        if self.total > self.limit:
            raise ArchiveTooLarge(_too_large(self.size_gb, "the uncompressed archive"))
        return data


def _too_large(size_gb: int, what: str) -> str:
    return f"size_gb: {what} is more than a {size_gb} GB volume can hold"


def _ext4_cost(member: tarfile.TarInfo) -> int:
    """Bytes of the filesystem this member will use (data blocks and inode)."""
    if member.isreg():
        return -(-member.size // BLOCK) * BLOCK + INODE
    if member.isdir():
        return BLOCK + INODE
    if member.issym():
        # Targets under 60 bytes live in the inode itself ("fast" symlinks).
        return INODE + (BLOCK if len(member.linkname.encode()) >= 60 else 0)
    return 0  # a hard link is one more directory entry


def _clean_name(name: str, what: str) -> str:
    """A relative, normalised name, or UnsafeArchive naming the member."""
    if not name or "\0" in name:
        raise UnsafeArchive(f"archive: {what} {name!r} has an empty or invalid name")
    if name.startswith("/"):
        raise UnsafeArchive(f"archive: {what} {name!r} is an absolute path")
    if ".." in name.split("/"):
        raise UnsafeArchive(f"archive: {what} {name!r} climbs out with '..'")
    return posixpath.normpath(name)


def _inside(root: Path, path: str) -> bool:
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root) + os.sep)


@dataclass
class _Usage:
    """What the members seen so far will take of the volume; ArchiveTooLarge past it."""

    budget: Budget
    used_bytes: int = 0
    used_inodes: int = 0

    def charge(self, member: tarfile.TarInfo) -> None:
        name = _clean_name(member.name, "member")
        self.used_bytes += _ext4_cost(member)
        self.used_inodes += 0 if member.islnk() or name == "." else 1
        if self.used_bytes > self.budget.bytes:
            raise ArchiveTooLarge(
                _too_large(
                    self.budget.size_gb,
                    f"the content (at {name!r}, {format_size(self.used_bytes)} so far)",
                )
            )
        if self.used_inodes > self.budget.inodes:
            what = f"an archive of more than {self.budget.inodes} files and directories"
            raise ArchiveTooLarge(_too_large(self.budget.size_gb, what))


@dataclass
class _Extraction:
    tar: tarfile.TarFile
    root: Path  # realpath of the staging directory
    files: set[str] = field(default_factory=set)  # regular files extracted, for hard links
    dirs: list[tarfile.TarInfo] = field(default_factory=list)

    def check(self, member: tarfile.TarInfo) -> tarfile.TarInfo:
        name = _clean_name(member.name, "member")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            kind = "a device node" if member.isdev() else "a special file"
            if member.isfifo():
                kind = "a FIFO"
            raise UnsafeArchive(f"archive: {name!r} is {kind}; only files, directories and links")
        if name == "." and not member.isdir():
            raise UnsafeArchive("archive: the volume root '.' can only be a directory")
        target = self.root / name
        if not _inside(self.root, str(target)):
            raise UnsafeArchive(f"archive: {name!r} resolves outside the volume (through a link)")
        if member.issym():
            self._check_symlink(name, member.linkname)
        if member.islnk():
            link = _clean_name(member.linkname, f"hard link {name!r} ->")
            if link not in self.files or not _inside(self.root, str(self.root / link)):
                raise UnsafeArchive(
                    f"archive: hard link {name!r} -> {member.linkname!r} does not point to a "
                    "file extracted earlier from the archive"
                )
            member = member.replace(linkname=link, deep=False)
        return member.replace(name=name, deep=False)

    def _check_symlink(self, name: str, linkname: str) -> None:
        if not linkname or "\0" in linkname:
            raise UnsafeArchive(f"archive: symlink {name!r} has an empty target")
        if linkname.startswith("/"):
            raise UnsafeArchive(
                f"archive: symlink {name!r} -> {linkname!r} is absolute (it would point out of "
                "the volume); use a relative target"
            )
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), linkname))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchive(
                f"archive: symlink {name!r} -> {linkname!r} points out of the volume"
            )

    def extract(self, member: tarfile.TarInfo) -> None:
        path = self.root / member.name
        if member.isdir():
            if member.name != ".":
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.dirs.append(member)  # attributes once its content is in
            return
        # A later entry replaces an earlier one (tar semantics), never writing through it.
        if path.is_symlink() or path.is_file():
            path.unlink()
        self.tar.extract(member, self.root, numeric_owner=True, filter="fully_trusted")
        if member.isreg():
            self.files.add(member.name)

    def finish(self) -> None:
        """Directory owners, modes and times, deepest first (as tar itself does)."""
        for member in sorted(self.dirs, key=lambda m: m.name, reverse=True):
            path = str(self.root / member.name)
            self.tar.chown(member, path, numeric_owner=True)
            self.tar.chmod(member, path)
            self.tar.utime(member, path)


def extract_archive(archive: Path, staging: Path, budget: Budget) -> None:
    """Extract ``archive`` (tar.gz) into the empty directory ``staging``, or raise.

    Raises ArchiveTooLarge, UnsafeArchive or InvalidArchive (all 400s naming the
    member); on failure ``staging`` is removed, so nothing half-extracted remains.
    """
    staging.mkdir(mode=0o755)
    root = Path(os.path.realpath(staging))
    try:
        usage = _Usage(budget)
        for _, member in _members(archive, budget):  # sizes and counts before any file
            usage.charge(member)
        extraction: _Extraction | None = None
        for tar, member in _members(archive, budget):
            extraction = extraction or _Extraction(tar, root)
            extraction.extract(extraction.check(member))
        if extraction is not None:
            extraction.finish()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InvalidArchive(f"archive: not a valid tar.gz ({exc})") from exc
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InvalidArchive(f"archive: cannot extract ({exc.strerror}: {exc.filename})") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _members(archive: Path, budget: Budget) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """One sequential pass over the archive's members (stream mode "r|": never seeking back
    in the gzip); a member's data is skipped unless the caller extracts it meanwhile."""
    with archive.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        # The tar stream of legitimate content is rarely much larger than the content;
        # twice the budget bounds the work a crafted stream can cause.
        reader = _CappedReader(gz, 2 * budget.bytes + (64 << 20), budget.size_gb)
        reader.header_phase()  # opening reads the first header already
        with tarfile.open(fileobj=reader, mode="r|", bufsize=_READ_CHUNK) as tar:  # type: ignore[call-overload]
            tar.copybufsize = _READ_CHUNK
            while True:
                reader.header_phase()
                member = tar.next()
                reader.data_phase()
                if member is None:
                    return
                yield tar, member
