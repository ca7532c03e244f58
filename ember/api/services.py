"""The server's long-lived parts as the routes see them: built by the composition root,
`ember.server` (re-exported here so the routes depend on the API package only)."""

from ember.server import Services

__all__ = ["Services"]
