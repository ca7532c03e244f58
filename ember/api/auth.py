"""Bearer JWT auth (HS256) with a per-server secret kept in the data dir.

The secret is generated on first start with 0600 permissions, so anyone who can
mint a token (`ember token`) can also read the data dir: the same trust
boundary as root on the host. Alternatives rejected: static API keys (no
expiry, no subject) and OIDC (needs an issuer this single-host tool lacks).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from _json import encode_basestring_ascii
from binascii import b2a_base64

from ember.errors import Unauthorized

# Not `typing`, `pathlib`, `json`, `base64` or `secrets` at import: the CLI mints its
# token with this module on its fast path (ember/client/wire.py), where each of them
# would cost more than the request.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

SECRET_FILE = "jwt.secret"
ALGORITHM = "HS256"
ISSUER = "ember"
URLSAFE = bytes.maketrans(b"+/", b"-_")


def load_or_create_secret(data_dir: Path) -> bytes:
    path = data_dir / SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    import secrets

    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    # O_EXCL: if two processes start at once, the loser reads the winner's secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as out:
        out.write(secret)
    return secret


def mint_token(secret: bytes, subject: str = "admin", ttl_seconds: int = 3600) -> str:
    """An HS256 JWT (RFC 7519) made with the standard library: the CLI mints its own
    token on the server host, and PyJWT imports `cryptography` (~0.5 s, most of a
    command's time). Tokens are checked with PyJWT (`verify_token`). The JSON is what
    `json.dumps(..., separators=(",", ":"))` writes for these flat objects."""
    now = int(time.time())
    sub, iss = encode_basestring_ascii(subject), encode_basestring_ascii(ISSUER)
    header = f'{{"alg":"{ALGORITHM}","typ":"JWT"}}'
    claims = f'{{"sub":{sub},"iss":{iss},"iat":{now},"exp":{now + ttl_seconds}}}'
    signed = f"{_b64(header.encode())}.{_b64(claims.encode())}"
    signature = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    """base64url without padding (`base64.urlsafe_b64encode`, whose module imports `re`)."""
    return b2a_base64(data, newline=False).rstrip(b"=").translate(URLSAFE).decode()


def verify_token(secret: bytes, token: str) -> dict[str, Any]:
    import jwt  # here: the CLI imports this module to mint, and PyJWT is slow to import

    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token has expired: mint a new one with `ember token`") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {exc}") from exc
    return claims


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing Authorization header: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    return token.strip()


def registry_token(authorization: str | None) -> str:
    """The token of a `/v2/` call: Bearer <jwt>, or Basic with the JWT as password (what
    `docker login` sends)."""
    scheme, _, value = (authorization or "").partition(" ")
    token = value.strip()
    if scheme.lower() == "basic":
        import base64

        try:
            return base64.b64decode(token).decode().partition(":")[2]
        except ValueError as exc:
            raise Unauthorized("malformed Basic credentials") from exc
    if scheme.lower() != "bearer":
        raise Unauthorized("authentication required: use an Ember token as the password")
    return token
