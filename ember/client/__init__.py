"""A small typed client for Ember's HTTP API, used by the CLI and the tests."""

from ember.client.client import ApiError, EmberClient

__all__ = ["ApiError", "EmberClient"]
