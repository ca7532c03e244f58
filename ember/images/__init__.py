"""Images: references, the registry client, the blob store, root-disk builds, the manager."""

from ember.images.blobs import BlobStore
from ember.images.distribution import Credentials
from ember.images.manager import DigestUsers, ImageManager, LocalRegistry
from ember.images.models import ImageRecord, ImageStatus
from ember.images.reference import ImageRef, parse_reference

__all__ = [
    "BlobStore",
    "Credentials",
    "DigestUsers",
    "ImageManager",
    "ImageRecord",
    "ImageRef",
    "ImageStatus",
    "LocalRegistry",
    "parse_reference",
]
