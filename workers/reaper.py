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

from presso.app.core.db import session_scope, utcnow
from presso.app.core.queue import Publisher
from presso.app.core.settings import Settings
from presso.app.jobs.models import Job, JobState

log = logging.getLogger(__name__)
PUBLISH_GRACE_S = 10.0
MAX_REPUBLISH_INTERVAL_FACTOR = 8  # a waiting job is re-sent at most every 8 x republish_after_s


@dataclass
class ReapResult:
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    republished: int = 0


def _expire(session: Session, job: Job, now: dt.datetime, result: ReapResult) -> bool:
    """One expired lease -> cancelled, failed or queued. True when it went back to queued."""
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
        return counter == "requeued"
    return False


def reap_expired(factory: sessionmaker[Session], result: ReapResult) -> list[tuple[str, str, int]]:
    """Expire leases; returns (id, queue, attempt) of the jobs put back to queued."""
    now = utcnow()
    requeued: list[tuple[str, str, int]] = []
    with session_scope(factory) as session:
        expired = session.scalars(
            select(Job).where(Job.state == JobState.running.value, Job.lease_expires_at < now).limit(500)
        ).all()
        for job in expired:
            if _expire(session, job, now, result):
                requeued.append((job.id, job.queue, job.attempt))
    return requeued


def publish_requeued(factory: sessionmaker[Session], publisher: Publisher, jobs: list[tuple[str, str, int]],
                     result: ReapResult) -> None:
    """Publish the jobs just requeued at once (no publish grace: nobody else is publishing them).

    A failed publish leaves ``last_published_at`` empty, so ``republish_stale`` retries after the grace.
    """
    for job_id, queue, attempt in jobs:
        try:
            publisher.publish(job_id, queue)
        except Exception:  # noqa: BLE001 - broker down: the stale pass retries
            log.warning("publishing requeued job %s failed", job_id, exc_info=True)
            continue
        with session_scope(factory) as session:
            session.execute(
                update(Job).where(Job.id == job_id, Job.attempt == attempt, Job.state == JobState.queued.value,
                                  Job.last_published_at.is_(None))
                .values(last_published_at=utcnow())
            )
        result.republished += 1


def republish_due(job: Job, now: dt.datetime, republish_after_s: float) -> bool:
    """Whether a queued job that was published already should be sent again.

    The broker says nothing about whether a message is still waiting, so a job that is merely behind a
    backlog looks like one whose message was lost. Re-sending it every ``republish_after_s`` floods the
    queue with duplicates (each costs a worker a fresh child process), which was measured to livelock the
    workers (see tests/faults). The interval doubles with the job's wait instead: re-sent after r, 2r,
    4r, ... up to 8r, so a lost message is still replaced within max(r, its wait so far, 8r).
    """
    if job.last_published_at is None:
        return True
    since = (now - job.last_published_at).total_seconds()
    waited_before = max(0.0, (job.last_published_at - job.queued_at).total_seconds())
    interval = min(max(republish_after_s, waited_before), MAX_REPUBLISH_INTERVAL_FACTOR * republish_after_s)
    return since >= interval


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
            ).order_by(Job.last_published_at.asc().nulls_first()).limit(2000)
        ).all()
        for job in jobs:
            if not republish_due(job, now, settings.republish_after_s):
                continue
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
    publish_requeued(factory, publisher, reap_expired(factory, result), result)
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
