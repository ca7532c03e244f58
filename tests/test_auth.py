from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import jwt
import pytest

from ember.api.auth import bearer_token, load_or_create_secret, mint_token, verify_token
from ember.errors import Unauthorized


def test_secret_is_created_once_with_private_mode(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path)
    assert load_or_create_secret(tmp_path) == secret
    assert stat.S_IMODE((tmp_path / "jwt.secret").stat().st_mode) == 0o600


def test_round_trip(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path)
    assert verify_token(secret, mint_token(secret, "alice"))["sub"] == "alice"


def test_expired_token_is_refused(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path)
    now = int(time.time())
    token = jwt.encode(
        {"sub": "a", "iss": "ember", "iat": now - 100, "exp": now - 10}, secret, "HS256"
    )
    with pytest.raises(Unauthorized, match="expired"):
        verify_token(secret, token)


def test_wrong_secret_is_refused(tmp_path: Path) -> None:
    token = mint_token(b"another-secret-that-is-long-enough-000")
    with pytest.raises(Unauthorized, match="invalid token"):
        verify_token(load_or_create_secret(tmp_path), token)


def test_unsigned_token_is_refused(tmp_path: Path) -> None:
    # PyJWT takes "" as the absent key of alg "none" (its stubs do not admit None).
    token = jwt.encode({"sub": "a", "iss": "ember", "iat": 1, "exp": 2**40}, "", "none")
    with pytest.raises(Unauthorized):
        verify_token(load_or_create_secret(tmp_path), token)


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer"])
def test_missing_or_malformed_header(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        bearer_token(header)


def test_minted_tokens_are_standard_hs256_jwts() -> None:
    """Minted with the standard library (fast for the CLI), read by PyJWT as any JWT."""
    token = mint_token(b"k" * 32, "someone", 60)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(token, b"k" * 32, algorithms=["HS256"], issuer="ember")
    assert claims["sub"] == "someone" and claims["exp"] - claims["iat"] == 60
    head, body, signature = token.split(".")
    other = "A" if signature[0] != "A" else "B"  # a first character's bits are all data
    forged = f"{head}.{body}.{other}{signature[1:]}"
    with pytest.raises(Unauthorized):
        verify_token(b"k" * 32, forged)


def test_minted_json_is_what_json_writes() -> None:
    """Written without `json` (the CLI's fast path): the same bytes as json.dumps."""
    token = mint_token(b"k" * 32, 'quo"te \u00fc', 60)
    head, body, _ = (base64.urlsafe_b64decode(part + "==") for part in token.split("."))
    claims = json.loads(body)
    assert claims["sub"] == 'quo"te \u00fc'
    assert head == json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode()
    assert body == json.dumps(claims, separators=(",", ":")).encode()
