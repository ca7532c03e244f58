"""Where the API is and which key to send, from the environment.

Ember's own names come first, then Hypeman's (so a Hypeman user's shell works
unchanged), then the names earlier Ember versions read.
"""

from __future__ import annotations

import os

from ember.client.wire import split_url
from ember.defaults import DEFAULT_DATA_DIR, DEFAULT_LISTEN

# Neither `typing` nor dataclasses (which import `inspect`), nor `pathlib` and
# `urllib.parse` at import: the CLI's fast path imports this module, and each would
# cost it more than its request (ember/client/wire.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_BASE_URL = f"http://{DEFAULT_LISTEN}"
BASE_URL_VARS = ("EMBER_BASE_URL", "HYPEMAN_BASE_URL", "EMBER_URL")
API_KEY_VARS = ("EMBER_API_KEY", "HYPEMAN_API_KEY", "EMBER_TOKEN")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})


class ClientConfig:
    """The base URL and API key, and which variable each came from, for error messages
    ("set EMBER_API_KEY")."""

    __slots__ = ("api_key", "api_key_source", "base_url", "base_url_source")

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        base_url_source: str = "default",
        api_key_source: str | None = None,
    ) -> None:
        self.base_url, self.api_key = base_url, api_key
        self.base_url_source, self.api_key_source = base_url_source, api_key_source

    def __repr__(self) -> str:  # the key is left out: reprs end up in logs
        return f"ClientConfig({self.base_url!r}, from {self.base_url_source})"

    @property
    def is_local(self) -> bool:
        """The server is on this machine (a loopback address)."""
        if plain := split_url(self.base_url):  # without `urllib.parse` on the fast path
            host = plain[0]
        else:
            from urllib.parse import urlsplit

            host = urlsplit(self.base_url).hostname or ""
        return host in LOOPBACK_HOSTS or host.startswith("127.")


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def config_from_env(env: Mapping[str, str] | None = None) -> ClientConfig:
    """The base URL and API key the environment names; the listen address of a local
    server (`EMBER_LISTEN`) or the default port when it names none."""
    env = os.environ if env is None else env
    url = _first(env, BASE_URL_VARS)
    if url is None:
        listen = env.get("EMBER_LISTEN", "").strip()
        base, source = (
            (f"http://{listen}", "EMBER_LISTEN") if listen else (DEFAULT_BASE_URL, "default")
        )
    else:
        source, base = url
    if "://" not in base:
        base = f"http://{base}"
    key = _first(env, API_KEY_VARS)
    return ClientConfig(
        base_url=base.rstrip("/"),
        api_key=key[1] if key else None,
        base_url_source=source,
        api_key_source=key[0] if key else None,
    )


def local_data_dir(env: Mapping[str, str] | None = None) -> str:
    """A server's data dir on this host, as `ember serve` finds it (EMBER_DATA_DIR)."""
    env = os.environ if env is None else env
    return env.get("EMBER_DATA_DIR", "").strip() or DEFAULT_DATA_DIR


def local_token(config: ClientConfig) -> str | None:
    """A short-lived token signed with a local server's secret, when this user can read it
    (root on the server host): the same trust as reading the server's database."""
    if config.api_key or not config.is_local:
        return None
    # Not ember.config: pydantic-settings alone would double the start-up time.
    from ember.api.auth import SECRET_FILE, mint_token

    try:  # read, never made: the secret is the server's to create
        with open(os.path.join(local_data_dir(), SECRET_FILE), "rb") as file:
            secret = file.read()
    except OSError:  # none, or not this user's to read
        return None
    return mint_token(secret, "cli", 3600)
