"""The HTTP API: the FastAPI app, its routers, auth and error mapping (see README.md)."""

from ember.api.app import create_app
from ember.api.auth import load_or_create_secret, mint_token, verify_token
from ember.api.services import Services

__all__ = ["Services", "create_app", "load_or_create_secret", "mint_token", "verify_token"]
