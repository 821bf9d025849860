"""The reaper: lost attempts go back to queued (or fail), and queued jobs whose message is gone are republished.

An attempt is lost when its worker is seen dead (workers/liveness.py: the job's process died under a live
worker, or the worker stopped beating for ``worker_dead_after_s``), or, as the backstop, when its lease
expires. The liveness checks run every ``worker_heartbeat_s`` (one indexed query each, cheap); lease expiry
and republishing every ``reaper_interval_s``. Runs inside each worker (a thread of the main process, which
also beats the worker's row) and as ``presso reaper``. Several reapers at once are safe: every transition is
a conditional UPDATE fenced on the attempt.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from presso.app.core.db import session_scope, utcnow
from presso.app.core.queue import Publisher
from presso.app.core.settings import Settings
from presso.app.jobs.models import Job, JobState, Worker
from presso.workers import liveness
from presso.workers.brokerscan import BrokerView, read_broker

log = logging.getLogger(__name__)
PUBLISH_GRACE_S = 10.0
MAX_REPUBLISH_INTERVAL_FACTOR = 8  # a waiting job is re-sent at most every 8 x republish_after_s
WORKER_ROW_TTL_S = 3600.0  # rows of workers silent this long (and at least 10 x dead_after) are deleted


@dataclass
class ReapResult:
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    republished: int = 0
    dead_workers: int = 0  # attempts found lost because their worker stopped beating
    dead_processes: int = 0  # attempts found lost because their process died under a live worker


def _lost(session: Session, job: Job, fence: Any, now: dt.datetime, why: str, result: ReapResult) -> str | None:
    """A lost attempt -> cancelled, failed or queued (the same outcomes whatever found it lost): returns which,
    or None when ``fence`` (the conditional UPDATE) no longer matched."""
    if job.cancel_requested:
        values = dict(state=JobState.cancelled.value, error_code="cancelled", error_message="cancelled by request",
                      finished_at=now)
        counter = "cancelled"
    elif job.attempt >= job.max_attempts:
        values = dict(state=JobState.failed.value, error_code="max_attempts_exceeded",
                      error_message=f"worker lost on attempt {job.attempt} of {job.max_attempts} ({why})",
                      finished_at=now)
        counter = "failed"
    else:
        values = dict(state=JobState.queued.value, queued_at=now, last_published_at=None,
                      progress_stage="requeued", progress_fraction=0.0,
                      error_message=f"worker lost on attempt {job.attempt} ({why})")
        counter = "requeued"
    if session.execute(fence.values(lease_expires_at=None, updated_at=now, **values)).rowcount:  # type: ignore[attr-defined]
        setattr(result, counter, getattr(result, counter) + 1)
        log.warning("job %s attempt %d: %s -> %s", job.id, job.attempt, why, values["state"])
        return counter
    return None


def _fence(job: Job) -> Any:
    return update(Job).where(Job.id == job.id, Job.attempt == job.attempt, Job.state == JobState.running.value)


def _expire(session: Session, job: Job, now: dt.datetime, result: ReapResult) -> bool:
    """One expired lease -> cancelled, failed or queued. True when it went back to queued."""
    fence = _fence(job).where(Job.lease_expires_at < now)
    return _lost(session, job, fence, now, "lease expired", result) == "requeued"


def reap_dead_processes(factory: sessionmaker[Session], identity: liveness.Identity,
                        result: ReapResult) -> list[tuple[str, str, int]]:
    """Running jobs of this worker whose process is no longer a live child of this process (kill -9, OOM)."""
    requeued: list[tuple[str, str, int]] = []
    with session_scope(factory) as session:
        jobs = session.scalars(select(Job).where(Job.state == JobState.running.value,
                                                 Job.worker_id == identity.worker_id)).all()
        now = utcnow()
        for job in jobs:
            if job.worker_pid is None or liveness.is_my_live_child(job.worker_pid):
                continue
            fence = _fence(job).where(Job.worker_id == identity.worker_id, Job.worker_pid == job.worker_pid)
            outcome = _lost(session, job, fence, now, f"its process {job.worker_pid} died", result)
            if outcome == "requeued":
                requeued.append((job.id, job.queue, job.attempt))
            result.dead_processes += outcome is not None
    return requeued


def reap_dead_workers(factory: sessionmaker[Session], dead_after_s: float, result: ReapResult, *,
                      exclude: str | None = None) -> list[tuple[str, str, int]]:
    """Running jobs whose worker has not beaten for ``dead_after_s`` (or has no row, for an attempt older than
    that). ``exclude``: the caller's own worker id (its own jobs are checked by process)."""
    requeued: list[tuple[str, str, int]] = []
    with session_scope(factory) as session:
        now = liveness.db_now(session)
        cutoff = now - dt.timedelta(seconds=dead_after_s)
        silent = or_(and_(Worker.id.is_(None), Job.started_at < cutoff), Worker.heartbeat_at < cutoff)
        jobs = session.scalars(
            select(Job).outerjoin(Worker, Worker.id == Job.worker_id)
            .where(Job.state == JobState.running.value, Job.worker_id.is_not(None), silent).limit(500)
        ).all()
        for job in jobs:
            if job.worker_id == exclude:
                continue
            beating = exists().where(Worker.id == job.worker_id, Worker.heartbeat_at >= cutoff)
            fence = _fence(job).where(Job.worker_id == job.worker_id, ~beating)  # still silent at the UPDATE
            outcome = _lost(session, job, fence, utcnow(), f"worker {job.worker_id} stopped beating", result)
            if outcome == "requeued":
                requeued.append((job.id, job.queue, job.attempt))
            result.dead_workers += outcome is not None
        ttl = max(WORKER_ROW_TTL_S, 10 * dead_after_s)
        session.execute(delete(Worker).where(Worker.heartbeat_at < now - dt.timedelta(seconds=ttl)))
    return requeued


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
    """Whether a queued job that was published already should be sent again, when the broker cannot be read.

    Without the broker's word a job that is merely behind a backlog looks like one whose message was lost.
    Re-sending it every ``republish_after_s`` floods the queue with duplicates (each costs a worker a fresh
    child process), which was measured to livelock the workers (see tests/faults). The interval doubles with
    the job's wait instead: re-sent after r, 2r, 4r, ... up to 8r, so a lost message is still replaced within
    max(r, its wait so far, 8r).
    """
    if job.last_published_at is None:
        return True
    since = (now - job.last_published_at).total_seconds()
    waited_before = max(0.0, (job.last_published_at - job.queued_at).total_seconds())
    interval = min(max(republish_after_s, waited_before), MAX_REPUBLISH_INTERVAL_FACTOR * republish_after_s)
    return since >= interval


def message_lost(job: Job, now: dt.datetime, republish_after_s: float, broker: BrokerView) -> bool:
    """Whether a queued job's message is known lost: none waits in the broker, and none was sent, taken by a
    worker, or released from a retry's countdown within ``republish_after_s``. (A live worker claims a message
    it took within moments, or at ``not_before`` for a countdown; one taken longer ago belongs to a worker
    that is gone.)"""
    if job.id in broker.waiting:
        return False
    marks = [t for t in (job.last_published_at, job.not_before) if t is not None]
    if job.id in broker.taken:
        marks.append(dt.datetime.fromtimestamp(broker.taken[job.id], dt.UTC))
    if not marks:
        return True  # never sent (the query applied the publish grace)
    return (now - max(marks)).total_seconds() >= republish_after_s


def republish_stale(factory: sessionmaker[Session], publisher: Publisher, settings: Settings,
                    result: ReapResult) -> None:
    """Re-send queued jobs whose message is lost. The broker is read (brokerscan) so that a job waiting behind a
    backlog is never re-sent; where it cannot be read, ``republish_due``'s backoff decides."""
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
        broker = read_broker(settings, sorted({job.queue for job in jobs})) if jobs else None
        for job in jobs:
            if broker is not None and job.id in broker.waiting:
                if job.last_published_at is None:  # sent, but the marker was lost (a crash after the publish)
                    session.execute(update(Job).where(Job.id == job.id).values(last_published_at=now))
                continue
            due = (message_lost(job, now, settings.republish_after_s, broker) if broker is not None
                   else republish_due(job, now, settings.republish_after_s))
            if not due:
                continue
            try:
                publisher.publish(job.id, job.queue)
            except Exception:  # noqa: BLE001 - broker down: try again next round
                log.warning("republish of job %s failed", job.id, exc_info=True)
                continue
            session.execute(update(Job).where(Job.id == job.id).values(last_published_at=now))
            result.republished += 1
            log.info("republished job %s (%s)", job.id, "message lost" if broker is not None else "backoff")


def reap_once(factory: sessionmaker[Session], publisher: Publisher, settings: Settings, *,
              dead_workers: bool = True) -> ReapResult:
    """One full pass: dead workers (unless the caller's liveness pass does that), expired leases, lost messages."""
    result = ReapResult()
    requeued = reap_dead_workers(factory, settings.worker_dead_after_s, result) if dead_workers else []
    publish_requeued(factory, publisher, requeued + reap_expired(factory, result), result)
    republish_stale(factory, publisher, settings, result)
    return result


class LivenessPass:
    """The fast pass, every ``worker_heartbeat_s``: beat this worker's row, requeue its jobs whose process died,
    requeue the jobs of workers that stopped beating, publish what was requeued.

    Other workers are judged only after this process has reached the database without a failure for
    ``worker_dead_after_s``: after an outage every beat is old, and the workers must first get a chance to
    beat again (otherwise one database restart would requeue every running job).
    """

    def __init__(self, factory: sessionmaker[Session], publisher: Publisher, settings: Settings,
                 identity: liveness.Identity | None = None) -> None:
        self.factory, self.publisher, self.settings, self.identity = factory, publisher, settings, identity
        self.db_ok_since: float | None = None

    def run(self) -> ReapResult:
        result = ReapResult()
        requeued: list[tuple[str, str, int]] = []
        try:
            if self.identity is not None:
                liveness.beat(self.factory, self.identity, self.settings.worker_queues)
                requeued += reap_dead_processes(self.factory, self.identity, result)
            now = time.monotonic()
            if self.db_ok_since is None:
                self.db_ok_since = now
            if now - self.db_ok_since >= self.settings.worker_dead_after_s:
                exclude = self.identity.worker_id if self.identity is not None else None
                requeued += reap_dead_workers(self.factory, self.settings.worker_dead_after_s, result,
                                              exclude=exclude)
        except Exception:
            self.db_ok_since = None
            raise
        finally:
            publish_requeued(self.factory, self.publisher, requeued, result)
        return result


class ReaperThread(threading.Thread):
    """The liveness pass every ``worker_heartbeat_s`` (when > 0) and the full pass every ``reaper_interval_s``.
    Also the loop of ``presso reaper`` (``run()`` in the foreground, no identity)."""

    def __init__(self, factory: sessionmaker[Session], publisher: Publisher, settings: Settings,
                 identity: liveness.Identity | None = None) -> None:
        super().__init__(name="presso-reaper", daemon=True)
        self.factory, self.publisher, self.settings = factory, publisher, settings
        on = settings.worker_heartbeat_s > 0
        self.liveness = LivenessPass(factory, publisher, settings, identity) if on else None
        self.stop_event = threading.Event()

    def run(self) -> None:
        full_every = self.settings.reaper_interval_s
        tick = min(self.settings.worker_heartbeat_s, full_every) if self.liveness is not None else full_every
        next_full = time.monotonic() + full_every
        while not self.stop_event.wait(tick):
            if self.liveness is not None:
                try:
                    self.liveness.run()
                except Exception:  # noqa: BLE001 - keep going after a database blip
                    log.warning("liveness pass failed", exc_info=True)
            if time.monotonic() >= next_full:
                next_full = time.monotonic() + full_every
                try:
                    reap_once(self.factory, self.publisher, self.settings, dead_workers=False)
                except Exception:  # noqa: BLE001 - keep reaping after a database blip
                    log.exception("reaper pass failed")
