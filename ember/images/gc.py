"""Blob garbage collection: mark what is reachable from the roots, sweep the rest.

Roots are manifest (or index) digests, plus any blob someone is relying on
right now; a root is followed through `config`, `layers` and `manifests` to
everything it names. Who the roots are, and why that is safe against pulls and
pushes running at the same time, is the caller's business (`ImageManager`,
described in the package README); this module only marks and sweeps.

Both run in one go, with no await in between, on the event loop thread, so
nothing that also runs there (a pull deciding a layer is cached, a push
checking a manifest's blobs) can interleave with them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ember.errors import EmberError
from ember.images.blobs import BlobStore

MAX_MANIFEST_BYTES = 4 << 20  # larger blobs are layers, whatever their first byte
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


class MissingManifest(EmberError):
    """A root that must be readable is not: what it refers to is unknown, so collect nothing."""


@dataclass(frozen=True)
class Collected:
    blobs: int = 0
    bytes: int = 0


def references(blobs: BlobStore, digest: str) -> list[str] | None:
    """The digests a manifest or index names; [] for any other blob; None if it is absent."""
    path = blobs.path(digest)
    try:
        with path.open("rb") as blob:
            if blob.read(1) != b"{":  # layers are gzip, zstd or tar; manifests JSON objects
                return []
            blob.seek(0)
            data = blob.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_MANIFEST_BYTES:
        return []
    try:
        body = json.loads(data)
    except ValueError:
        return []
    if not isinstance(body, dict):
        return []
    descriptors = [body.get("config")]
    for key in ("layers", "manifests"):
        items = body.get(key)
        descriptors += items if isinstance(items, list) else []
    found = (d.get("digest") for d in descriptors if isinstance(d, dict))
    return [d for d in found if isinstance(d, str) and _DIGEST_RE.match(d)]


def reachable(blobs: BlobStore, roots: Iterable[str], required: Iterable[str] = ()) -> set[str]:
    """Every digest reachable from `roots` and `required`; a missing `required` one raises.

    A missing ordinary root is fine (a pull that has not fetched it yet; the
    platforms of an index that were never pulled).
    """
    live: set[str] = set()
    todo = [d for d in (*required, *roots) if _DIGEST_RE.match(d)]
    for digest in set(required):
        if references(blobs, digest) is None:
            raise MissingManifest(f"manifest {digest} of a ready image is missing")
    while todo:
        digest = todo.pop()
        if digest in live:
            continue
        live.add(digest)
        todo.extend(references(blobs, digest) or [])
    return live


def sweep(blobs: BlobStore, live: set[str]) -> Collected:
    """Delete every blob not in `live`."""
    count = freed = 0
    for digest in blobs.digests():
        if digest not in live:
            freed += blobs.remove(digest)
            count += 1
    return Collected(count, freed)
