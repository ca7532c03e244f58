"""The HTTP API (`create_app` in ember.api.app, over the parts ember.server builds)."""

from ember.api.auth import load_or_create_secret, mint_token, verify_token

__all__ = ["load_or_create_secret", "mint_token", "verify_token"]
