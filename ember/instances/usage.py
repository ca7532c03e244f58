"""Which instances use an image digest: the image manager's "in use" check.

A plain function over the store, not a method of the instance manager, so the
server can hand it to the image manager at construction (images are built
before instances, and never import them).
"""

from __future__ import annotations

from ember.instances.models import InstanceRecord
from ember.store import Repository, Store


def digest_users(store: Store, digest: str) -> list[str]:
    """The names of the instances booting from `digest`, whatever their state."""
    repo = Repository(store, "instances", InstanceRecord, "instance")
    return [record.name for record in repo.all() if record.image_digest == digest]
