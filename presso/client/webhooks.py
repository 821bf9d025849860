"""Webhook signatures: what Presso sends with every callback, and ``verify`` for the receiver.

Each delivery is a POST of a JSON body with the headers::

    Presso-Event: job.finished
    Presso-Delivery: <job id>.<attempt>
    Presso-Timestamp: <unix seconds>
    Presso-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

The secret is the tenant's (``PressoClient.webhook_secret()``). A receiver checks the signature over the exact
bytes it received and refuses old timestamps (replays)::

    from presso.client.webhooks import verify
    event = verify(secret, request.body, request.headers)   # raises InvalidSignature
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SIGNATURE = "Presso-Signature"
TIMESTAMP = "Presso-Timestamp"
EVENT = "Presso-Event"
DELIVERY = "Presso-Delivery"


class InvalidSignature(ValueError):
    """The signature is missing or wrong, or the timestamp is outside the tolerance."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def signed_headers(secret: str, body: bytes, *, event: str, delivery: str, now: float | None = None) -> dict[str, str]:
    ts = int(now if now is not None else time.time())
    return {"Content-Type": "application/json", "User-Agent": "presso-webhooks/1", EVENT: event,
            DELIVERY: delivery, TIMESTAMP: str(ts), SIGNATURE: sign(secret, ts, body)}


def verify(secret: str, body: bytes, headers: Mapping[str, str], *, tolerance_s: float = 300,
           now: float | None = None) -> dict[str, Any]:
    """The decoded event when the signature over ``body`` is valid and the timestamp within ``tolerance_s``
    of now; InvalidSignature otherwise. ``headers`` is looked up case-insensitively."""
    lower = {k.lower(): v for k, v in headers.items()}
    got, stamp = lower.get(SIGNATURE.lower()), lower.get(TIMESTAMP.lower())
    if not got or not stamp or not stamp.isdigit():
        raise InvalidSignature("missing Presso-Signature or Presso-Timestamp")
    current = now if now is not None else time.time()
    if abs(current - int(stamp)) > tolerance_s:
        raise InvalidSignature(f"timestamp {stamp} is more than {tolerance_s:.0f} s from now")
    expected = sign(secret, int(stamp), body)
    if not any(hmac.compare_digest(expected, part.strip()) for part in got.split(",")):
        raise InvalidSignature("signature does not match")
    event: dict[str, Any] = json.loads(body)
    return event
