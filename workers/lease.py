"""Fenced job-row writes: claim, heartbeat, progress, finish, requeue.

Every write after the claim carries ``WHERE id = ? AND attempt = ? AND state = 'running'``, so a
worker that lost its lease (the reaper requeued the job, another worker claimed it) cannot touch it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from presso.app.core.db import session_scope, utcnow
from presso.app.jobs.models import Job, JobState

RUNNING = JobState.running.value


@dataclass(frozen=True)
class Claim:
    job_id: str
    tenant_id: str
    attempt: int
    max_attempts: int
    queue: str
    model_uri: str
    request: dict[str, Any]


def claim(factory: sessionmaker[Session], job_id: str, *, lease_s: float, worker_id: str | None = None,
          worker_pid: int | None = None) -> Claim | None:
    """queued -> running with attempt + 1. None when the job is not queued (done, running, cancelled).

    ``worker_id`` / ``worker_pid`` name the registered worker and its process that run the attempt
    (workers/liveness.py): the attempt is then requeued as soon as either is seen dead, not at lease expiry.
    """
    now = utcnow()
    with session_scope(factory) as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.queued.value, Job.cancel_requested.is_(False))
            .values(state=RUNNING, attempt=Job.attempt + 1, lease_expires_at=now + dt.timedelta(seconds=lease_s),
                    started_at=now, progress_stage="starting", progress_fraction=0.0, not_before=None,
                    error_code=None, error_message=None, updated_at=now, worker_id=worker_id,
                    worker_pid=worker_pid if worker_id is not None else None)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
        return Claim(job.id, job.tenant_id, job.attempt, job.max_attempts, job.queue, job.model_uri,
                     dict(job.request))


def _fenced(claim: Claim) -> Any:
    return update(Job).where(Job.id == claim.job_id, Job.attempt == claim.attempt, Job.state == RUNNING)


def heartbeat(
    factory: sessionmaker[Session], claim: Claim, *, lease_s: float, stage: str | None, fraction: float
) -> bool | None:
    """Extend the lease and store progress. Returns cancel_requested, or None when the lease is lost."""
    now = utcnow()
    values: dict[str, Any] = {"lease_expires_at": now + dt.timedelta(seconds=lease_s), "updated_at": now}
    if stage is not None:
        values.update(progress_stage=stage[:64], progress_fraction=max(0.0, min(1.0, fraction)))
    with session_scope(factory) as session:
        row = session.execute(_fenced(claim).values(**values).returning(Job.cancel_requested)).first()
    return None if row is None else bool(row[0])


def finish(factory: sessionmaker[Session], claim: Claim, state: JobState, **values: Any) -> bool:
    """Move a running job to a terminal state. False when the lease was lost meanwhile."""
    now = utcnow()
    values = {"state": state.value, "finished_at": now, "lease_expires_at": None, "updated_at": now, **values}
    with session_scope(factory) as session:
        result = session.execute(_fenced(claim).values(**values))
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def requeue(factory: sessionmaker[Session], claim: Claim, *, delay_s: float, reason: str) -> bool:
    """Running -> queued for another attempt after ``delay_s`` (infrastructure error)."""
    now = utcnow()
    with session_scope(factory) as session:
        result = session.execute(
            _fenced(claim).values(
                state=JobState.queued.value, lease_expires_at=None, queued_at=now, last_published_at=now,
                not_before=now + dt.timedelta(seconds=delay_s), progress_stage="retrying", progress_fraction=0.0,
                error_message=reason[:2000], updated_at=now,
            )
        )
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def store_plan(factory: sessionmaker[Session], claim: Claim, plan: dict[str, Any]) -> bool:
    """Keep the resource plan made before the fetch on the row (GET /v1/jobs/{id}/plan serves it)."""
    with session_scope(factory) as session:
        result = session.execute(_fenced(claim).values(plan=plan))
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]
