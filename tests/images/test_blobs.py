"""The content-addressed blob store: only verified bytes ever reach a final path."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ember.errors import InvalidArgument
from ember.images.blobs import BlobStore, DigestMismatch


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_streamed_blob_is_verified_and_stored_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(3 * 1024 * 1024)
    digest = digest_of(data)
    with store.writer(digest, len(data)) as blob:
        for offset in range(0, len(data), 1 << 20):
            blob.write(data[offset : offset + (1 << 20)])
    assert store.has(digest) and store.path(digest).read_bytes() == data
    assert store.path(digest) == tmp_path / "sha256" / digest[7:]
    store.put_bytes(data, digest)  # already there: nothing to do
    assert os.listdir(store.tmp_dir) == []


@pytest.mark.parametrize("size", [None, 99])
def test_mismatch_leaves_nothing(tmp_path: Path, size: int | None) -> None:
    store = BlobStore(tmp_path)
    claimed = digest_of(b"expected") if size is None else digest_of(b"actual")
    with pytest.raises(DigestMismatch, match=claimed), store.writer(claimed, size) as blob:
        blob.write(b"actual")
    assert not store.has(claimed)
    assert os.listdir(store.tmp_dir) == []


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = digest_of(b"whole")
    with pytest.raises(ConnectionError), store.writer(digest) as blob:
        blob.write(b"who")
        raise ConnectionError("dropped")
    assert not store.has(digest) and os.listdir(store.tmp_dir) == []


def test_leftovers_from_a_killed_writer_are_cleared(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "blob-half").write_bytes(b"half")
    assert os.listdir(BlobStore(tmp_path).tmp_dir) == []


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64, ""])
def test_malformed_digests_are_refused(tmp_path: Path, digest: str) -> None:
    with pytest.raises(InvalidArgument):
        BlobStore(tmp_path).path(digest)


def test_listing_and_removing_blobs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"some blob"
    store.put_bytes(data, digest_of(data))
    (store.tmp_dir / "blob-in-flight").write_bytes(b"partial")
    (store.blobs_dir / "not-a-digest").write_bytes(b"stray")
    assert store.digests() == [digest_of(data)]  # temp files and strays are not blobs
    assert store.remove(digest_of(data)) == len(data)
    assert store.remove(digest_of(data)) == 0
    assert store.digests() == []
