"""A small typed client for Ember's HTTP API, used by the CLI and the tests."""

from ember.client.client import ApiError, EmberClient
from ember.client.config import ClientConfig, config_from_env

__all__ = ["ApiError", "ClientConfig", "EmberClient", "config_from_env"]
