"""Push a local image into Ember's registry (`/v2/`) with the distribution protocol.

Sources: an OCI image layout directory, an OCI archive (a tar of such a layout), or a
`docker save` tarball. Docker 25+ writes an OCI layout inside its tarballs, which is
used when present; older tarballs (`manifest.json` + `layer.tar`s) get an OCI manifest
built here, their layers pushed uncompressed (Ember detects the compression itself).
Blobs are read from the source as they are sent: a tarball is never unpacked to disk.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

from ember.client.client import ApiError, EmberClient

CHUNK = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
REF_ANNOTATION = "org.opencontainers.image.ref.name"
Progress = Callable[[int], None]


class SourceError(Exception):
    """The local source is not an image this can push (the message says why)."""


@dataclass
class Blob:
    digest: str
    size: int
    open: Callable[[], IO[bytes]]


@dataclass
class Source:
    """What to push: blobs, then manifests (children before the index naming them)."""

    blobs: dict[str, Blob] = field(default_factory=dict)
    manifests: list[tuple[str, str, bytes]] = field(default_factory=list)  # digest, type, body
    top: tuple[str, bytes] | None = None  # media type, body: pushed under the tag
    names: list[str] = field(default_factory=list)  # ref names the source carries

    @property
    def total_bytes(self) -> int:
        return sum(blob.size for blob in self.blobs.values())


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- reading sources -------------------------------------------------------------------


class _Files:
    """A directory or a tar, read by relative path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if path.is_file():
            try:
                self.tar = tarfile.open(path)  # noqa: SIM115 (kept open while pushing)
            except tarfile.TarError as exc:
                raise SourceError(
                    f"{path}: not an OCI layout directory, an OCI archive or a `docker save` "
                    "tarball (not a tar archive)"
                ) from exc
            for member in self.tar.getmembers():
                self.members[member.name.removeprefix("./")] = member

    def exists(self, name: str) -> bool:
        if self.tar is None:
            return (self.path / name).is_file()
        return name in self.members

    def size(self, name: str) -> int:
        if self.tar is None:
            return (self.path / name).stat().st_size
        return self._member(name).size

    def _member(self, name: str) -> tarfile.TarInfo:
        member = self.members.get(name)
        if member is None:
            raise SourceError(f"{self.path}: {name} is missing")
        # A docker tarball links identical layers: read the file the link names.
        while member.islnk() or member.issym():
            linked = member.linkname.removeprefix("./")
            if member.issym():
                linked = str(Path(name).parent / linked)
            member = self.members.get(linked) or member
            if member.name.removeprefix("./") == name:
                break
        return member

    def open(self, name: str) -> IO[bytes]:
        if self.tar is None:
            return (self.path / name).open("rb")
        extracted = self.tar.extractfile(self._member(name))
        if extracted is None:
            raise SourceError(f"{self.path}: {name} is not a file")
        return extracted

    def read(self, name: str) -> bytes:
        if not self.exists(name):
            raise SourceError(f"{self.path}: {name} is missing")
        with self.open(name) as file:
            return file.read()


def read_source(path: Path, ref: str | None = None) -> Source:
    """The image at `path`; `ref` picks one of several images by its ref name or tag."""
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    files = _Files(path)
    if files.exists("index.json") and files.exists("oci-layout"):
        return _read_oci(files, ref)
    if files.exists("manifest.json"):
        return _read_docker(files, ref)
    raise SourceError(
        f"{path}: not an OCI layout (oci-layout + index.json), an OCI archive or a "
        "`docker save` tarball (manifest.json)"
    )


def _blob_path(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


def _add_blob(files: _Files, source: Source, descriptor: dict[str, Any]) -> None:
    digest = str(descriptor["digest"])
    name = _blob_path(digest)
    source.blobs[digest] = Blob(digest, files.size(name), lambda: files.open(name))


def _add_manifest(files: _Files, source: Source, descriptor: dict[str, Any]) -> bytes:
    """Queue a manifest (and, for an index, its children first); its body."""
    digest = str(descriptor["digest"])
    body = files.read(_blob_path(digest))
    manifest = json.loads(body)
    media_type = str(manifest.get("mediaType") or descriptor.get("mediaType") or OCI_MANIFEST)
    if media_type in INDEX_TYPES:
        for child in manifest.get("manifests", []):
            if files.exists(_blob_path(child["digest"])):  # a layout may hold one platform
                _add_manifest(files, source, child)
    else:
        _add_blob(files, source, manifest["config"])
        for layer in manifest.get("layers", []):
            _add_blob(files, source, layer)
    source.manifests.append((digest, media_type, body))
    return body


def _read_oci(files: _Files, ref: str | None) -> Source:
    index = json.loads(files.read("index.json"))
    entries: list[dict[str, Any]] = index.get("manifests", [])
    source = Source()
    names = [str((e.get("annotations") or {}).get(REF_ANNOTATION, "")) for e in entries]
    source.names = [name for name in names if name]
    chosen = _choose(entries, names, ref, files.path)
    body = _add_manifest(files, source, chosen)
    source.manifests.pop()  # the chosen one is pushed under the tag, last
    media_type = str(json.loads(body).get("mediaType") or chosen.get("mediaType") or OCI_MANIFEST)
    source.top = (media_type, body)
    return source


def _names(name: str, ref: str) -> bool:
    """Whether an image named `name` is the one `ref` asks for: the whole name, its tag,
    or its last path parts (Docker writes `docker.io/library/x:tag`, skopeo bare tags)."""
    return ref in (name, name.rsplit(":", 1)[-1]) or name.endswith(f"/{ref}")


def _choose(
    entries: list[dict[str, Any]], names: list[str], ref: str | None, path: Path
) -> dict[str, Any]:
    if not entries:
        raise SourceError(f"{path}: the index names no image")
    if ref is None:
        if len(entries) == 1:
            return entries[0]
        raise SourceError(
            f"{path}: holds {len(entries)} images; pick one with --ref "
            f"({', '.join(n or '?' for n in names)})"
        )
    for entry, name in zip(entries, names, strict=True):
        if name and _names(name, ref):
            return entry
    raise SourceError(f"{path}: no image named {ref!r} (it has: {', '.join(names) or 'none'})")


def _read_docker(files: _Files, ref: str | None) -> Source:
    """A pre-25 `docker save` tarball: config and uncompressed layers under an OCI manifest."""
    images: list[dict[str, Any]] = json.loads(files.read("manifest.json"))
    tags = [", ".join(image.get("RepoTags") or []) for image in images]
    if ref is None and len(images) != 1:
        raise SourceError(f"{files.path}: holds {len(images)} images; pick one with --ref")
    if ref is None:
        image = images[0]
    else:
        matching = [i for i in images if any(_names(t, ref) for t in i.get("RepoTags") or [])]
        if not matching:
            raise SourceError(f"{files.path}: no image named {ref!r} (it has: {'; '.join(tags)})")
        image = matching[0]
    source = Source(names=[t for i in images for t in i.get("RepoTags") or []])
    config = files.read(image["Config"])
    config_digest = sha256(config)
    source.blobs[config_digest] = Blob(config_digest, len(config), lambda: _bytes_io(config))
    layers = []
    for layer_path in image["Layers"]:
        digest = _file_digest(files, layer_path)
        size = files.size(layer_path)
        source.blobs[digest] = Blob(digest, size, partial(files.open, layer_path))
        layers.append({"mediaType": OCI_LAYER_TAR, "digest": digest, "size": size})
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": layers,
    }
    source.top = (OCI_MANIFEST, json.dumps(manifest, separators=(",", ":")).encode())
    return source


def _file_digest(files: _Files, name: str) -> str:
    """A layer's digest: its file name says it in newer tarballs; otherwise hashed."""
    if name.startswith("blobs/sha256/"):
        return "sha256:" + name.rsplit("/", 1)[1]
    digest = hashlib.sha256()
    with files.open(name) as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _bytes_io(data: bytes) -> IO[bytes]:
    import io

    return io.BytesIO(data)


# ---- pushing ---------------------------------------------------------------------------


def _chunks(file: IO[bytes], progress: Progress | None) -> Iterator[bytes]:
    with file:
        while chunk := file.read(CHUNK):
            yield chunk
            if progress:
                progress(len(chunk))


def push_source(
    api: EmberClient,
    source: Source,
    repository: str,
    tag: str,
    progress: Progress | None = None,
) -> str:
    """Upload the blobs the registry lacks, the child manifests, then the top manifest
    under `tag`; the digest the registry answers. Blobs it has count as sent."""
    for blob in source.blobs.values():
        head = api.http.head(f"/v2/{repository}/blobs/{blob.digest}")
        if head.status_code == 200:
            if progress:
                progress(blob.size)
            continue
        start = api.request("POST", f"/v2/{repository}/blobs/uploads/")
        location = start.headers["Location"]
        separator = "&" if "?" in location else "?"
        api.request(
            "PUT", f"{location}{separator}digest={blob.digest}",
            content=_chunks(blob.open(), progress),
            headers={"Content-Type": "application/octet-stream",
                     "Content-Length": str(blob.size)},
            timeout=None,
        )  # fmt: skip
    for digest, media_type, body in source.manifests:
        api.request("PUT", f"/v2/{repository}/manifests/{digest}",
                    content=body, headers={"Content-Type": media_type})  # fmt: skip
    if source.top is None:
        raise ApiError(0, "invalid_source", "nothing to push")
    media_type, body = source.top
    answer = api.request("PUT", f"/v2/{repository}/manifests/{tag}",
                         content=body, headers={"Content-Type": media_type})  # fmt: skip
    return str(answer.headers.get("Docker-Content-Digest") or sha256(body))
