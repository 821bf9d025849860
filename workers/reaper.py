"""The reaper: expired leases go back to queued (or fail), and unpublished queued jobs are republished.

Runs every ``reaper_interval_s`` inside each worker (a thread of the main process) and as
``presso reaper``. Several reapers at once are safe: every transition is a conditional UPDATE.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import session_scope, utcnow
from app.core.queue import Publisher
from app.core.settings import Settings
from app.jobs.models import Job, JobState

log = logging.getLogger(__name__)
PUBLISH_GRACE_S = 10.0


@dataclass
class ReapResult:
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    republished: int = 0


def _expire(session: Session, job: Job, now: dt.datetime, result: ReapResult) -> None:
    fence = update(Job).where(Job.id == job.id, Job.attempt == job.attempt, Job.state == JobState.running.value,
                              Job.lease_expires_at < now)
    if job.cancel_requested:
        values = dict(state=JobState.cancelled.value, error_code="cancelled", error_message="cancelled by request",
                      finished_at=now)
        counter = "cancelled"
    elif job.attempt >= job.max_attempts:
        values = dict(state=JobState.failed.value, error_code="max_attempts_exceeded",
                      error_message=f"worker lost on attempt {job.attempt} of {job.max_attempts}", finished_at=now)
        counter = "failed"
    else:
        values = dict(state=JobState.queued.value, queued_at=now, last_published_at=None,
                      progress_stage="requeued", progress_fraction=0.0,
                      error_message=f"worker lost on attempt {job.attempt}")
        counter = "requeued"
    if session.execute(fence.values(lease_expires_at=None, updated_at=now, **values)).rowcount:  # type: ignore[attr-defined]
        setattr(result, counter, getattr(result, counter) + 1)
        log.warning("job %s attempt %d: lease expired -> %s", job.id, job.attempt, values["state"])


def reap_expired(factory: sessionmaker[Session], result: ReapResult) -> None:
    now = utcnow()
    with session_scope(factory) as session:
        expired = session.scalars(
            select(Job).where(Job.state == JobState.running.value, Job.lease_expires_at < now).limit(500)
        ).all()
        for job in expired:
            _expire(session, job, now, result)


def republish_stale(factory: sessionmaker[Session], publisher: Publisher, settings: Settings,
                    result: ReapResult) -> None:
    now = utcnow()
    never = and_(Job.last_published_at.is_(None), Job.queued_at < now - dt.timedelta(seconds=PUBLISH_GRACE_S))
    stale = Job.last_published_at < now - dt.timedelta(seconds=settings.republish_after_s)
    with session_scope(factory) as session:
        jobs = session.scalars(
            select(Job).where(
                Job.state == JobState.queued.value, Job.cancel_requested.is_(False),
                or_(Job.not_before.is_(None), Job.not_before <= now), or_(never, stale),
            ).limit(500)
        ).all()
        for job in jobs:
            try:
                publisher.publish(job.id, job.queue)
            except Exception:  # noqa: BLE001 - broker down: try again next round
                log.warning("republish of job %s failed", job.id, exc_info=True)
                continue
            session.execute(update(Job).where(Job.id == job.id).values(last_published_at=now))
            result.republished += 1
            log.info("republished job %s", job.id)


def reap_once(factory: sessionmaker[Session], publisher: Publisher, settings: Settings) -> ReapResult:
    result = ReapResult()
    reap_expired(factory, result)
    republish_stale(factory, publisher, settings, result)
    return result


class ReaperThread(threading.Thread):
    def __init__(self, factory: sessionmaker[Session], publisher: Publisher, settings: Settings) -> None:
        super().__init__(name="presso-reaper", daemon=True)
        self.factory, self.publisher, self.settings = factory, publisher, settings
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.settings.reaper_interval_s):
            try:
                reap_once(self.factory, self.publisher, self.settings)
            except Exception:  # noqa: BLE001 - keep reaping after a database blip
                log.exception("reaper pass failed")
