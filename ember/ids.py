"""Identifiers: 24-character CUID2-style ids.

A CUID2 is a lowercase letter followed by base36 characters drawn from a hash
of time, a counter, randomness and a host fingerprint. We keep its shape (so
ids look like Hypeman's) and its properties that matter here: collision
resistance and no ordering leak.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import socket
import string
import time

ID_LENGTH = 24
_ALPHABET = string.digits + string.ascii_lowercase
_counter = itertools.count(secrets.randbelow(2**32))
_fingerprint = hashlib.sha3_256(f"{socket.gethostname()}{os.getpid()}".encode()).hexdigest()


def _base36(number: int) -> str:
    out = []
    while number:
        number, digit = divmod(number, 36)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out)) or "0"


def new_id() -> str:
    """Return a fresh 24-character id: one letter, then 23 base36 characters."""
    seed = f"{time.time_ns()}{next(_counter)}{secrets.token_hex(16)}{_fingerprint}"
    body = _base36(int(hashlib.sha3_512(seed.encode()).hexdigest(), 16))
    return secrets.choice(string.ascii_lowercase) + body[1:ID_LENGTH]


def is_id(value: str) -> bool:
    return (
        len(value) == ID_LENGTH
        and value[0] in string.ascii_lowercase
        and all(c in _ALPHABET for c in value)
    )
