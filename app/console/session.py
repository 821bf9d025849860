"""Console sessions: a cookie the server signs after checking an API key, and CSRF tokens bound to it.

The browser never holds the API key. Signing in checks the key exactly as the API does (the API's own
``current_tenant`` dependency) and issues a cookie carrying ``{sid, tenant, key id, expiry}``, HMAC-SHA256
signed with the server's secret (``settings.py``: rotatable, newest first). Every request re-checks, by
key id, that the key is still live and belongs to that tenant: revoking the key ends its console sessions
at once. Anonymous visitors get an unsigned-in session too, so the sign-in form has a CSRF token.

CSRF: every POST form carries ``csrf_token`` = HMAC(secret, "csrf:" + sid); a POST whose token does not
match its session (or whose Origin is another site) is refused with 403. The cookie is HttpOnly,
SameSite=Lax, Path=/console, and Secure when the request came over https.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE = "presso_console"
COOKIE_PATH = "/console"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class ConsoleSession:
    sid: str
    expires_at: int
    tenant_id: str | None = None
    key_id: str | None = None

    @property
    def signed_in(self) -> bool:
        return self.tenant_id is not None and self.key_id is not None

    @classmethod
    def anonymous(cls, ttl_s: int) -> ConsoleSession:
        return cls(sid=secrets.token_urlsafe(18), expires_at=int(time.time()) + ttl_s)

    @classmethod
    def for_key(cls, tenant_id: str, key_id: str, ttl_s: int) -> ConsoleSession:
        """A fresh session id on sign-in: a session id planted before sign-in is never promoted."""
        return cls(sid=secrets.token_urlsafe(18), expires_at=int(time.time()) + ttl_s, tenant_id=tenant_id,
                   key_id=key_id)


class Signer:
    """HMAC-SHA256 with rotation: sign with ``secrets[0]``, accept any of ``secrets``."""

    def __init__(self, keys: list[bytes]):
        if not keys:
            raise ValueError("at least one signing secret")
        self.keys = keys

    def _mac(self, key: bytes, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(key, purpose + b"\x00" + data, hashlib.sha256).digest()

    def dumps(self, session: ConsoleSession) -> str:
        payload = json.dumps({"s": session.sid, "e": session.expires_at, "t": session.tenant_id,
                              "k": session.key_id}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(self.keys[0], b'session', payload))}"

    def loads(self, token: str | None) -> tuple[ConsoleSession, bool] | None:
        """``(session, signed_with_an_older_secret)``, or None when forged, malformed or expired."""
        if not token or token.count(".") != 1 or len(token) > 4096:
            return None
        body, mac = token.split(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        used = next((i for i, key in enumerate(self.keys)
                     if hmac.compare_digest(self._mac(key, b"session", payload), given)), None)
        if used is None:
            return None
        try:
            data = json.loads(payload)
            session = ConsoleSession(sid=str(data["s"]), expires_at=int(data["e"]), tenant_id=data.get("t"),
                                     key_id=data.get("k"))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires_at <= time.time():
            return None
        return session, used > 0

    def csrf_token(self, session: ConsoleSession) -> str:
        return _b64(self._mac(self.keys[0], b"csrf", session.sid.encode()))

    def check_csrf(self, session: ConsoleSession, token: str | None) -> bool:
        if not token:
            return False
        try:
            given = _unb64(token)
        except (binascii.Error, ValueError):
            return False
        return any(hmac.compare_digest(self._mac(key, b"csrf", session.sid.encode()), given) for key in self.keys)
