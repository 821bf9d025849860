"""API keys: generated with a recognizable prefix, shown once, stored as sha256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "presso_sk_"
DISPLAY_CHARS = len(KEY_PREFIX) + 6


@dataclass(frozen=True)
class NewKey:
    secret: str
    prefix: str
    key_hash: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(secret=secret, prefix=secret[:DISPLAY_CHARS], key_hash=hash_key(secret))


def bearer_token(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from ``Authorization: Bearer ...`` or ``X-API-Key``."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
