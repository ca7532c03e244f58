"""`EmberClient`: thin, typed wrappers over the HTTP API (answers are plain dicts).

The official `hypeman` client works against Ember too; this one exists so the
CLI needs nothing beyond httpx and covers Ember's own additions.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from ember.config import DEFAULT_LISTEN

JSON = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status, self.code, self.message = status, code, message


def _quote(name: str) -> str:
    return quote(name, safe="")


class EmberClient:
    def __init__(
        self, base_url: str | None = None, token: str | None = None, timeout: float = 60
    ) -> None:
        base_url = base_url or os.environ.get("EMBER_URL") or f"http://{DEFAULT_LISTEN}"
        token = token if token is not None else os.environ.get("EMBER_TOKEN", "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
                code, message = body.get("code", "error"), body.get("message", response.text)
            except ValueError:
                code, message = "error", response.text
            raise ApiError(response.status_code, code, message)
        return response.json() if response.content else None

    # ---- health and images -----------------------------------------------------------

    def health(self) -> JSON:
        result: JSON = self._call("GET", "/health")
        return result

    def pull(self, name: str, platform: str | None = None) -> JSON:
        body: JSON = {"name": name}
        if platform:
            body["platform"] = platform
        result: JSON = self._call("POST", "/images", json=body)
        return result

    def image(self, name: str) -> JSON:
        result: JSON = self._call("GET", f"/images/{_quote(name)}")
        return result

    def images(self) -> list[JSON]:
        result: list[JSON] = self._call("GET", "/images")
        return result

    def delete_image(self, name: str) -> None:
        self._call("DELETE", f"/images/{_quote(name)}")

    def watch_image(self, name: str, interval: float = 0.2) -> Iterator[JSON]:
        """Yield the image each time its status, queue position or progress changes, until
        it settles (ready or failed)."""
        last: tuple[object, object, object] | None = None
        while True:
            image = self.image(name)
            seen = (image["status"], image.get("queue_position"), image.get("progress"))
            if seen != last:
                last = seen
                yield image
            if image["status"] in ("ready", "failed"):
                return
            time.sleep(interval)

    # ---- instances -------------------------------------------------------------------

    def create_instance(self, **body: Any) -> JSON:
        result: JSON = self._call("POST", "/instances", json=body)
        return result

    def instance(self, ref: str) -> JSON:
        result: JSON = self._call("GET", f"/instances/{_quote(ref)}")
        return result

    def instances(self, state: str | None = None) -> list[JSON]:
        params = {"state": state} if state else {}
        result: list[JSON] = self._call("GET", "/instances", params=params)
        return result

    def instance_action(self, ref: str, action: str) -> JSON:
        result: JSON = self._call("POST", f"/instances/{_quote(ref)}/{action}")
        return result

    def delete_instance(self, ref: str) -> None:
        self._call("DELETE", f"/instances/{_quote(ref)}")

    def wait(self, ref: str, state: str, timeout: str = "60s") -> JSON:
        params = {"state": state, "timeout": timeout}
        result: JSON = self._call("GET", f"/instances/{_quote(ref)}/wait", params=params)
        return result

    def logs(
        self, ref: str, *, source: str = "app", tail: int = 100, follow: bool = False
    ) -> Iterator[str]:
        params = {"source": source, "tail": str(tail), "follow": str(follow).lower()}
        with self.http.stream(
            "GET", f"/instances/{_quote(ref)}/logs", params=params, timeout=None
        ) as response:
            if response.status_code >= 400:
                response.read()
                body = response.json()
                raise ApiError(response.status_code, body["code"], body["message"])
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield str(json.loads(line[6:]))
