"""What the sync and the async client share: errors, the retry policy, request paths and response parsing.

No I/O here: ``PressoClient`` (sync.py) and ``AsyncPressoClient`` (aio.py) each run the same loop around it.
"""

from __future__ import annotations

import email.utils
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from presso.client.models import Job

RETRY_STATUSES = frozenset({429, 502, 503, 504})


class PressoError(Exception):
    """An error answer of the API (``status``, its machine-readable ``code``, ``message`` and ``field``), or a
    client-side failure (status 0: ``checksum_mismatch``, ``unsafe_path``, ``connection_failed``)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on connection errors and on 429/502/503/504, with exponential backoff and full jitter.

    A ``Retry-After`` header is honoured: the client waits at least that long, and when the server asks for
    more than ``max_retry_after_s`` the error is raised at once rather than retried early. Requests that are not
    idempotent (POST) are retried after a connection error only when nothing reached the server (connect
    failures), or when they carry an Idempotency-Key (``submit`` always sends one).
    """

    retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    max_retry_after_s: float = 120.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt))

    def delay_for_response(self, resp: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying this answer, or None to return/raise it."""
        if resp.status_code not in RETRY_STATUSES or attempt >= self.retries:
            return None
        after = retry_after(resp)
        if after is None:
            return self.backoff(attempt)
        return after if after <= self.max_retry_after_s else None

    def delay_for_error(self, exc: httpx.TransportError, request: httpx.Request, attempt: int) -> float | None:
        if attempt >= self.retries:
            return None
        safe = request.method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE") or "idempotency-key" in request.headers
        if safe or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return self.backoff(attempt)
        return None


def retry_after(resp: httpx.Response) -> float | None:
    """The Retry-After header in seconds (delta-seconds or an HTTP date), or None."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def raise_for_error(resp: httpx.Response) -> None:
    """The API's error body ``{"error": {code, message, field}}`` as a PressoError."""
    if resp.status_code < 400:
        return
    after = retry_after(resp)
    try:
        err = resp.json()["error"]
        code, message, field = str(err.get("code", "error")), str(err.get("message", "")), err.get("field")
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message, field = "http_error", resp.text[:500], None
    raise PressoError(resp.status_code, code, message, field, retry_after_s=after)


def connection_error(exc: httpx.TransportError, request: httpx.Request) -> PressoError:
    return PressoError(0, "connection_failed", f"{request.method} {request.url}: {type(exc).__name__}: {exc}")


def submit_headers(idempotency_key: str | None) -> dict[str, str]:
    """Every submit carries an Idempotency-Key (a fresh one unless given), so a retry after a lost answer
    returns the job the first try created instead of creating a second one."""
    return {"Idempotency-Key": idempotency_key or f"sdk-{uuid.uuid4().hex}"}


def list_params(*, state: str | None, name: str | None, labels: dict[str, str] | None,
                created_after: Any, created_before: Any, limit: int, cursor: str | None) -> list[tuple[str, str]]:
    """Query parameters of GET /v1/jobs (labels as repeated ``label=key=value``)."""
    params: list[tuple[str, str]] = [("limit", str(limit))]
    for key, value in (("state", state), ("name", name), ("cursor", cursor)):
        if value:
            params.append((key, value))
    for key, when in (("created_after", created_after), ("created_before", created_before)):
        if when is not None:
            params.append((key, when.isoformat() if hasattr(when, "isoformat") else str(when)))
    for key, value in (labels or {}).items():
        params.append(("label", f"{key}={value}"))
    return params


def progress_line(job: Job) -> str:
    """One line for a terminal: state, stage, percent, elapsed."""
    stage = job.progress.stage or "-"
    pct = 100 * job.progress.fraction
    width = 24
    filled = int(round(width * job.progress.fraction))
    bar = "#" * filled + "." * (width - filled)
    extra = f"  {job.error.code}" if job.error else ""
    return f"{job.id[:12]} {job.state:<9} [{bar}] {pct:5.1f}% {stage[:28]:<28}{extra}"
