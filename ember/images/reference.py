"""Image references, normalized the way Docker does.

`alpine` -> `docker.io/library/alpine:latest`; `host:5000/a/b:tag` keeps its
registry; `name@sha256:<hex>` pins a digest (a tag may stand beside it, but the
digest wins). The first path component is a registry only if it looks like a
host: it contains a dot or a colon, or is `localhost`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ember.errors import InvalidArgument

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
MAX_NAME_LENGTH = 255


@dataclass(frozen=True, slots=True)
class ImageRef:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def name(self) -> str:
        base = f"{self.registry}/{self.repository}"
        if self.digest:
            return f"{base}@{self.digest}"
        return f"{base}:{self.tag or DEFAULT_TAG}"

    def __str__(self) -> str:
        return self.name


def _split_registry(remainder: str) -> tuple[str, str]:
    first, sep, rest = remainder.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not HOST_RE.match(first):
            raise InvalidArgument(f"invalid registry host {first!r}")
        return first, rest
    return DEFAULT_REGISTRY, remainder


def unqualified(text: str) -> str | None:
    """`repository[:tag]` of a reference that names no registry host (`app:v1`, not
    `docker.io/app:v1` or `host:5000/app:v1`), with the tag made explicit; else None.
    Such a name is looked up in Ember's own registry before Docker Hub."""
    value = text.strip()
    registry, path = _split_registry(value)
    if registry != DEFAULT_REGISTRY or value.startswith(f"{DEFAULT_REGISTRY}/") or "@" in path:
        return None
    return path if ":" in path else f"{path}:{DEFAULT_TAG}"


def parse_reference(text: str) -> ImageRef:
    """Parse and normalize an image reference; InvalidArgument says what is wrong."""
    value = text.strip()
    if not value:
        raise InvalidArgument("image reference is empty")
    if len(value) > MAX_NAME_LENGTH + 200 or any(c.isspace() for c in value):
        raise InvalidArgument(f"invalid image reference {text!r}")
    remainder, _, digest = value.partition("@")
    if digest and not DIGEST_RE.match(digest):
        raise InvalidArgument(f"invalid digest {digest!r} in {text!r} (expected sha256:<64 hex>)")
    registry, path = _split_registry(remainder)
    tag = None
    if ":" in path:
        path, tag = path.rsplit(":", 1)
        if not TAG_RE.match(tag):
            raise InvalidArgument(f"invalid tag {tag!r} in {text!r}")
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if not REPOSITORY_RE.match(path) or len(path) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"invalid repository {path!r} in {text!r}: use lowercase letters, digits and "
            "separators (. _ -), components joined by /"
        )
    return ImageRef(registry, path, tag if tag or digest else DEFAULT_TAG, digest or None)
