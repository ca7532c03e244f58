"""Push a `BuiltImage` to a registry with the plain distribution protocol."""

from __future__ import annotations

import base64

import httpx

from ember.testkit.image import BuiltImage


def auth_headers(token: str | None = None, basic: tuple[str, str] | None = None) -> dict[str, str]:
    if token:
        return {"Authorization": f"Bearer {token}"}
    if basic:
        encoded = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        return {"Authorization": f"Basic {encoded}"}
    return {}


def push(
    image: BuiltImage,
    base_url: str,
    repository: str,
    tag: str,
    *,
    token: str | None = None,
    basic: tuple[str, str] | None = None,
    chunk_size: int | None = None,
) -> str:
    """Upload every blob (monolithic, or chunked PATCHes of `chunk_size`), then the manifest.

    Returns the manifest digest the registry reported.
    """
    with httpx.Client(base_url=base_url, headers=auth_headers(token, basic), timeout=120) as http:
        for digest, data in image.blobs.items():
            if http.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
                continue
            _upload_blob(http, repository, digest, data, chunk_size)
        response = http.put(
            f"/v2/{repository}/manifests/{tag}",
            content=image.manifest,
            headers={"Content-Type": image.media_type},
        )
        response.raise_for_status()
        return str(response.headers.get("Docker-Content-Digest", image.digest))


def _upload_blob(
    http: httpx.Client, repository: str, digest: str, data: bytes, chunk_size: int | None
) -> None:
    start = http.post(f"/v2/{repository}/blobs/uploads/")
    start.raise_for_status()
    location = start.headers["Location"]
    if chunk_size:
        for offset in range(0, len(data), chunk_size):
            chunk = data[offset : offset + chunk_size]
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            }
            patched = http.patch(location, content=chunk, headers=headers)
            patched.raise_for_status()
            location = patched.headers["Location"]
        data = b""
    separator = "&" if "?" in location else "?"
    done = http.put(
        f"{location}{separator}digest={digest}",
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    done.raise_for_status()
