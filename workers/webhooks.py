"""Deliver job webhooks: a signed POST to the job's ``callback_url`` once the job is terminal.

The job row is the outbox (``webhook_state``: waiting -> delivered | retrying -> ... -> failed), so no terminal
path (worker, cancel, reaper) has to remember to send anything: ``deliver_due`` finds finished jobs whose webhook
is due, claims each by moving ``webhook_next_at`` forward (a compare-and-set, so two reapers never send the same
attempt), POSTs through the fetch layer's SSRF guard, and records the attempt in ``webhook_log``. Retries back off
exponentially (``webhook_backoff_s`` doubling, capped at ``webhook_max_backoff_s``) up to
``webhook_max_attempts``. Delivery is at-least-once: receivers dedupe on the Presso-Delivery header.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from presso.app.core.db import utcnow
from presso.app.core.settings import Settings
from presso.app.jobs.models import TERMINAL_STATES, Job
from presso.app.jobs.service import to_public
from presso.app.tenants.service import webhook_secret
from presso.client.webhooks import signed_headers
from presso.fetch.errors import FetchError
from presso.fetch.outbound import post_checked

log = logging.getLogger(__name__)
DUE = ("waiting", "retrying")
CLAIM_S = 120.0
MAX_BATCH = 50


def payload(job: Job) -> bytes:
    body = {"event": "job.finished", "job": to_public(job).model_dump(mode="json")}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def deliver_due(factory: sessionmaker[Session], settings: Settings, *, now: dt.datetime | None = None) -> int:
    """Send every due webhook once; returns how many attempts were made."""
    now = now or utcnow()
    with factory() as session:
        due = list(session.execute(
            select(Job.id, Job.webhook_next_at).where(
                Job.webhook_state.in_(DUE), Job.state.in_([s.value for s in TERMINAL_STATES]),
                or_(Job.webhook_next_at.is_(None), Job.webhook_next_at <= now))
            .order_by(Job.finished_at).limit(MAX_BATCH)))
    sent = 0
    for job_id, next_at in due:
        if _claim(factory, job_id, next_at, now):
            _attempt(factory, settings, job_id)
            sent += 1
    return sent


def _claim(factory: sessionmaker[Session], job_id: str, next_at: dt.datetime | None, now: dt.datetime) -> bool:
    cond = Job.webhook_next_at.is_(None) if next_at is None else Job.webhook_next_at == next_at
    with factory() as session:
        claimed = session.execute(update(Job).where(Job.id == job_id, Job.webhook_state.in_(DUE), cond)
                                  .values(webhook_next_at=now + dt.timedelta(seconds=CLAIM_S)))
        session.commit()
        return bool(claimed.rowcount)  # type: ignore[attr-defined]


def _attempt(factory: sessionmaker[Session], settings: Settings, job_id: str) -> None:
    with factory() as session:
        job = session.get(Job, job_id)
        if job is None or not job.callback_url:
            return
        attempt = job.webhook_attempts + 1
        body = payload(job)
        secret = webhook_secret(session, job.tenant_id)
        headers = signed_headers(secret, body, event="job.finished", delivery=f"{job.id}.{attempt}")
        started = time.monotonic()
        entry: dict[str, Any] = {"attempt": attempt, "at": utcnow().isoformat()}
        try:
            answer = post_checked(job.callback_url, body, headers, allow_http=settings.fetch_allow_http,
                                  allow_private_hosts=settings.fetch_allow_private_hosts,
                                  timeout_s=settings.webhook_timeout_s)
            entry["status"] = answer.status
            ok = 200 <= answer.status < 300
            if not ok:
                entry["error"] = f"HTTP {answer.status}: {answer.body[:200]}"
        except FetchError as exc:
            ok = False
            entry["error"] = f"{exc.code}: {exc.message}"[:500]
        entry["ms"] = round(1000 * (time.monotonic() - started), 1)
        if ok:
            state, next_at = "delivered", None
        elif attempt >= settings.webhook_max_attempts:
            state, next_at = "failed", None
        else:
            delay = min(settings.webhook_max_backoff_s, settings.webhook_backoff_s * 2 ** (attempt - 1))
            state, next_at = "retrying", utcnow() + dt.timedelta(seconds=delay)
            entry["retry_in_s"] = delay
        job.webhook_attempts, job.webhook_state, job.webhook_next_at = attempt, state, next_at
        job.webhook_log = [*(job.webhook_log or []), entry]
        session.commit()
    level = logging.INFO if ok else logging.WARNING
    log.log(level, "job %s webhook attempt %d: %s", job_id, attempt, entry.get("error") or entry.get("status"))


class WebhookThread(threading.Thread):
    """``deliver_due`` every ``webhook_poll_s``, beside the reaper (every worker and ``presso reaper``)."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        super().__init__(name="presso-webhooks", daemon=True)
        self.factory, self.settings = factory, settings
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.settings.webhook_poll_s):
            try:
                deliver_due(self.factory, self.settings)
            except Exception:  # noqa: BLE001 - keep delivering after a database blip
                log.warning("webhook pass failed", exc_info=True)
