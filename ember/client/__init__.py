"""A small typed client for Ember's HTTP API, used by the CLI and the tests.

The names are loaded on first use (PEP 562), so that `ember.client.config` can be
imported without httpx: the CLI's fast path (`ember/cli/fast.py`) needs only it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `typing`'s: the CLI's fast path would pay for importing it
if TYPE_CHECKING:
    from typing import Any

    from ember.client.client import ApiError, EmberClient
    from ember.client.config import ClientConfig, config_from_env

__all__ = ["ApiError", "ClientConfig", "EmberClient", "config_from_env"]
_WHERE = {
    "ApiError": "ember.client.client",
    "EmberClient": "ember.client.client",
    "ClientConfig": "ember.client.config",
    "config_from_env": "ember.client.config",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ember.client' has no attribute {name!r}")
    import importlib  # here: the fast path imports only the submodules it names

    return getattr(importlib.import_module(_WHERE[name]), name)
