"""`EmberClient`: thin, typed wrappers over the HTTP API (answers are plain dicts).

The official `hypeman` client works against Ember too; this one exists so the
CLI needs nothing beyond httpx and websockets and covers Ember's own additions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx

from ember.client.config import ClientConfig, config_from_env

JSON = dict[str, Any]


class ApiError(Exception):
    """An error answer of the API (Hypeman's `{code, message}` body), or no answer at all
    (`status` 0: the server could not be reached)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status, self.code, self.message = status, code, message


def _quote(name: str) -> str:
    return quote(name, safe="")


def error_of(status: int, body: bytes) -> ApiError:
    """The ApiError an error answer describes (its JSON body, or its text)."""
    text = body.decode(errors="replace").strip()
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        message = decoded.get("message") or decoded.get("detail") or text
        errors = decoded.get("errors")  # the registry's (distribution) error shape
        if not decoded.get("message") and isinstance(errors, list) and errors:
            first = errors[0]
            return ApiError(status, str(first.get("code", "error")), str(first.get("message")))
        return ApiError(status, str(decoded.get("code", "error")), str(message))
    return ApiError(status, "error", text or f"HTTP {status}")


class EmberClient:
    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 60,
        *,
        config: ClientConfig | None = None,
    ) -> None:
        config = config or config_from_env()
        self.base_url = (base_url or config.base_url).rstrip("/")
        self.token = token if token is not None else (config.api_key or "")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> EmberClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def unreachable(self, exc: Exception) -> ApiError:
        reason = str(exc) or type(exc).__name__
        return ApiError(0, "unreachable", f"cannot reach Ember at {self.base_url}: {reason}")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; ApiError for an error answer or no answer."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc
        if response.status_code >= 400:
            raise error_of(response.status_code, response.content)
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    # ---- health and images -----------------------------------------------------------

    def health(self) -> JSON:
        result: JSON = self._call("GET", "/health")
        return result

    def capabilities(self) -> JSON:
        result: JSON = self._call("GET", "/capabilities")
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
        return _watch(partial(self.image, name), ("ready", "failed"), interval)

    # ---- pushes to other registries ----------------------------------------------------

    def push(self, image: str, target: str, *, insecure: bool, credentials: JSON | None) -> JSON:
        body: JSON = {"image": image, "target": target, "insecure": insecure}
        if credentials:
            body["credentials"] = credentials
        result: JSON = self._call("POST", "/pushes", json=body)
        return result

    def push_status(self, push_id: str) -> JSON:
        result: JSON = self._call("GET", f"/pushes/{_quote(push_id)}")
        return result

    def watch_push(self, push_id: str, interval: float = 0.2) -> Iterator[JSON]:
        """Yield the push each time it changes, until it settles (pushed or failed)."""
        return _watch(partial(self.push_status, push_id), ("pushed", "failed"), interval)

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

    def instance_action(self, ref: str, action: str, body: JSON | None = None) -> JSON:
        """POST /instances/{ref}/{action}: stop, start, standby, restore, fork."""
        kwargs: JSON = {} if body is None else {"json": body}
        result: JSON = self._call("POST", f"/instances/{_quote(ref)}/{action}", **kwargs)
        return result

    def delete_instance(self, ref: str, *, graceful: bool = False) -> None:
        params = {"graceful_shutdown": "true"} if graceful else {}
        self._call("DELETE", f"/instances/{_quote(ref)}", params=params)

    def wait(self, ref: str, state: str, timeout: str = "60s") -> JSON:
        params = {"state": state, "timeout": timeout}
        # The server holds the answer up to `timeout` (at most 5 minutes).
        result: JSON = self._call(
            "GET", f"/instances/{_quote(ref)}/wait", params=params, timeout=330
        )
        return result

    def stats(self, ref: str) -> JSON:
        result: JSON = self._call("GET", f"/instances/{_quote(ref)}/stats")
        return result

    def stat_path(self, ref: str, path: str, *, follow_links: bool = False) -> JSON:
        params = {"path": path, "follow_links": str(follow_links).lower()}
        result: JSON = self._call("GET", f"/instances/{_quote(ref)}/stat", params=params)
        return result

    def logs(
        self, ref: str, *, source: str = "app", tail: int = 100, follow: bool = False
    ) -> Iterator[str]:
        """Log lines (Server-Sent Events, one JSON string per `data:` line)."""
        params = {"source": source, "tail": str(tail), "follow": str(follow).lower()}
        for data in self._events(f"/instances/{_quote(ref)}/logs", params):
            yield str(data)

    def _events(self, path: str, params: dict[str, str]) -> Iterator[Any]:
        """A Server-Sent Events stream's `data:` payloads, each decoded from JSON."""
        try:
            with self.http.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code >= 400:
                    raise error_of(response.status_code, response.read())
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        yield json.loads(line[6:])
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from exc

    # ---- snapshots (the official client's shapes) ------------------------------------

    def create_snapshot(self, ref: str, kind: str, name: str | None = None) -> JSON:
        body: JSON = {"kind": kind, **({"name": name} if name else {})}
        result: JSON = self._call("POST", f"/instances/{_quote(ref)}/snapshots", json=body)
        return result

    def restore_snapshot(self, ref: str, snapshot: str, target_state: str | None = None) -> JSON:
        body: JSON = {"target_state": target_state} if target_state else {}
        path = f"/instances/{_quote(ref)}/snapshots/{_quote(snapshot)}/restore"
        result: JSON = self._call("POST", path, json=body)
        return result

    def snapshots(self, **filters: str) -> list[JSON]:
        params = {key: value for key, value in filters.items() if value}
        result: list[JSON] = self._call("GET", "/snapshots", params=params)
        return result

    def snapshot(self, ref: str) -> JSON:
        result: JSON = self._call("GET", f"/snapshots/{_quote(ref)}")
        return result

    def delete_snapshot(self, ref: str) -> None:
        self._call("DELETE", f"/snapshots/{_quote(ref)}")

    def fork_snapshot(self, ref: str, name: str, target_state: str | None = None) -> JSON:
        body: JSON = {"name": name, **({"target_state": target_state} if target_state else {})}
        result: JSON = self._call("POST", f"/snapshots/{_quote(ref)}/fork", json=body)
        return result

    # ---- volumes ---------------------------------------------------------------------

    def create_volume(self, name: str, size_gb: int) -> JSON:
        result: JSON = self._call("POST", "/volumes", json={"name": name, "size_gb": size_gb})
        return result

    def volume_from_archive(self, name: str, size_gb: int, data: Iterable[bytes]) -> JSON:
        params = {"name": name, "size_gb": str(size_gb)}
        headers = {"Content-Type": "application/gzip"}
        result: JSON = self._call(
            "POST", "/volumes/from-archive", params=params, content=data, headers=headers,
            timeout=None,
        )  # fmt: skip
        return result

    def volumes(self) -> list[JSON]:
        result: list[JSON] = self._call("GET", "/volumes")
        return result

    def volume(self, ref: str) -> JSON:
        result: JSON = self._call("GET", f"/volumes/{_quote(ref)}")
        return result

    def delete_volume(self, ref: str) -> None:
        self._call("DELETE", f"/volumes/{_quote(ref)}")

    def attach_volume(self, ref: str, volume: str, mount_path: str, *, readonly: bool) -> JSON:
        """Attach a volume to a stopped instance; the instance."""
        body = {"mount_path": mount_path, "readonly": readonly}
        path = f"/instances/{_quote(ref)}/volumes/{_quote(volume)}"
        result: JSON = self._call("POST", path, json=body)
        return result

    def detach_volume(self, ref: str, volume: str) -> JSON:
        result: JSON = self._call("DELETE", f"/instances/{_quote(ref)}/volumes/{_quote(volume)}")
        return result

    # ---- ingresses -------------------------------------------------------------------

    def create_ingress(
        self, name: str, rules: list[JSON], tags: dict[str, str] | None = None
    ) -> JSON:
        body: JSON = {"name": name, "rules": rules, **({"tags": tags} if tags else {})}
        result: JSON = self._call("POST", "/ingresses", json=body)
        return result

    def ingresses(self, tags: dict[str, str] | None = None) -> list[JSON]:
        # Hypeman's tag filter: deepObject style, tags[key]=value.
        params = {f"tags[{key}]": value for key, value in (tags or {}).items()}
        result: list[JSON] = self._call("GET", "/ingresses", params=params)
        return result

    def ingress(self, ref: str) -> JSON:
        result: JSON = self._call("GET", f"/ingresses/{_quote(ref)}")
        return result

    def delete_ingress(self, ref: str) -> None:
        self._call("DELETE", f"/ingresses/{_quote(ref)}")

    # ---- service groups (Ember extension) --------------------------------------------

    def create_group(self, **body: Any) -> JSON:
        result: JSON = self._call("POST", "/service-groups", json=body)
        return result

    def groups(self) -> list[JSON]:
        result: list[JSON] = self._call("GET", "/service-groups")
        return result

    def group(self, ref: str) -> JSON:
        result: JSON = self._call("GET", f"/service-groups/{_quote(ref)}")
        return result

    def delete_group(self, ref: str) -> None:
        self._call("DELETE", f"/service-groups/{_quote(ref)}")

    def set_autoscale(self, ref: str, **body: Any) -> JSON:
        result: JSON = self._call("PUT", f"/service-groups/{_quote(ref)}/autoscale", json=body)
        return result

    def autoscale(self, ref: str) -> JSON | None:
        """The group's autoscale configuration, None when it has none."""
        try:
            result: JSON = self._call("GET", f"/service-groups/{_quote(ref)}/autoscale")
        except ApiError as exc:
            if exc.code == "autoscale_not_configured":
                return None
            raise
        return result

    def autoscale_decisions(self, ref: str, limit: int = 50) -> list[JSON]:
        path = f"/service-groups/{_quote(ref)}/autoscale/decisions"
        result: list[JSON] = self._call("GET", path, params={"limit": limit})
        return result

    # ---- templates (Ember extension) -------------------------------------------------

    def create_template(self, **body: Any) -> JSON:
        result: JSON = self._call("POST", "/templates", json=body)
        return result

    def templates(self) -> list[JSON]:
        result: list[JSON] = self._call("GET", "/templates")
        return result

    def template(self, ref: str) -> JSON:
        result: JSON = self._call("GET", f"/templates/{_quote(ref)}")
        return result

    def delete_template(self, ref: str) -> None:
        self._call("DELETE", f"/templates/{_quote(ref)}")

    # ---- builds and builders (the official client's shapes) ---------------------------

    def create_build(self, source: bytes, fields: dict[str, str]) -> JSON:
        """`fields`: the form's text fields (dockerfile, image_name, secrets as JSON...)."""
        files = {"source": ("source.tar.gz", source, "application/gzip")}
        result: JSON = self._call("POST", "/builds", files=files, data=fields)
        return result

    def build(self, ref: str) -> JSON:
        result: JSON = self._call("GET", f"/builds/{_quote(ref)}")
        return result

    def builds(self) -> list[JSON]:
        result: list[JSON] = self._call("GET", "/builds")
        return result

    def cancel_build(self, ref: str) -> None:
        self._call("DELETE", f"/builds/{_quote(ref)}")

    def build_events(self, ref: str, *, follow: bool = True) -> Iterator[JSON]:
        """The build's events from the first (Server-Sent Events, one JSON per `data:`)."""
        params = {"follow": str(follow).lower()}
        yield from self._events(f"/builds/{_quote(ref)}/events", params)

    def create_builder(self, **body: Any) -> JSON:
        result: JSON = self._call("POST", "/builders", json=body)
        return result

    def builders(self) -> list[JSON]:
        result: list[JSON] = self._call("GET", "/builders")
        return result

    def builder(self, ref: str) -> JSON:
        result: JSON = self._call("GET", f"/builders/{_quote(ref)}")
        return result

    def delete_builder(self, ref: str) -> None:
        self._call("DELETE", f"/builders/{_quote(ref)}")

    def prune_builder(self, ref: str) -> JSON:
        result: JSON = self._call("POST", f"/builders/{_quote(ref)}/prune")
        return result

    # ---- WebSockets (exec and cp live in ember.client.streams) ------------------------

    def websocket_url(self, ref: str, kind: str) -> str:
        scheme, _, rest = self.base_url.partition("://")
        ws_scheme = "wss" if scheme == "https" else "ws"
        return f"{ws_scheme}://{rest}/instances/{_quote(ref)}/{kind}"


def _watch(get: Callable[[], JSON], ends: tuple[str, ...], interval: float) -> Iterator[JSON]:
    """Poll `get` and yield each answer whose status, queue position or progress changed,
    until its status is one of `ends`."""
    last: tuple[object, object, object] | None = None
    while True:
        item = get()
        seen = (item["status"], item.get("queue_position"), item.get("progress"))
        if seen != last:
            last = seen
            yield item
        if item["status"] in ends:
            return
        time.sleep(interval)
