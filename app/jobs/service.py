"""Job service: create / get / list / cancel, every query scoped by tenant."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
from typing import Any, cast

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from presso.app.core.db import utcnow
from presso.app.core.errors import (
    IdempotencyConflict,
    InvalidCallbackUrl,
    InvalidInput,
    JobFinished,
    NotFound,
    TooManyJobs,
)
from presso.app.core.queue import Publisher, multi_gpu_queue
from presso.app.core.settings import Settings
from presso.app.jobs.models import Job, JobLog, JobState
from presso.app.jobs.schemas import (
    SERVICE_FIELDS,
    JobCreate,
    JobError,
    JobLogLine,
    JobLogs,
    JobPublic,
    Progress,
    Webhook,
)
from presso.app.jobs.uris import check_uri
from presso.app.tenants.models import Tenant
from presso.compression.configs import StepConfig

log = logging.getLogger(__name__)
ACTIVE = (JobState.queued.value, JobState.running.value)


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def queue_for(body: JobCreate) -> str:
    """Lossless-only recipes need no accelerator; a target job searches on one; a job of several ranks goes to the
    queue of workers with at least that many GPUs (gpu-x2, gpu-x4, gpu-x8: the next size up)."""
    if body.resources.gpus > 1:
        return multi_gpu_queue(body.resources.gpus)
    if body.recipe is None:
        return "gpu"
    methods = {cast(StepConfig, s).method for s in body.recipe.steps}
    return "cpu" if methods == {"lossless"} else "gpu"


def check_uris(body: JobCreate, settings: Settings) -> None:
    for field, uri in body.uris().items():
        check_uri(uri, settings, field=field)
    if body.callback_url is not None:
        check_callback(body.callback_url, settings)


def check_callback(url: str, settings: Settings, *, field: str = "callback_url") -> None:
    """The SSRF guard of model URIs on a webhook URL (https only; private addresses per the allowlist)."""
    from presso.fetch.errors import FetchError
    from presso.fetch.outbound import check_callback_url

    try:
        check_callback_url(url, allow_http=settings.fetch_allow_http,
                           allow_private_hosts=settings.fetch_allow_private_hosts)
    except FetchError as exc:
        raise InvalidCallbackUrl(f"{field}: {exc.message}", field=field) from exc


def _by_key(session: Session, tenant_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def _replay(existing: Job, digest: str) -> Job:
    if existing.request_hash != digest:
        raise IdempotencyConflict("this Idempotency-Key was used with a different request body")
    return existing


def _check_capacity(session: Session, tenant: Tenant, settings: Settings) -> None:
    cap = tenant.max_active_jobs or settings.max_active_jobs_per_tenant
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id, Job.state.in_(ACTIVE))
    )
    if (active or 0) >= cap:
        raise TooManyJobs(f"tenant has {active} queued or running jobs (cap {cap})", retry_after_s=30)


def create_job(
    *, session: Session, tenant: Tenant, body: JobCreate, idempotency_key: str | None,
    settings: Settings, publisher: Publisher,
) -> tuple[Job, bool]:
    """Insert and commit the row, then publish its id. Returns (job, created)."""
    # The request as given, without defaults: the worker parses it again, and a default must stay a default
    # there (the default group_size 128 falls back to per channel on a narrower layer; an explicit one is an error).
    payload = body.stored()
    digest = request_hash({**payload, **body.model_dump(mode="json", include=set(SERVICE_FIELDS),
                                                         exclude_unset=True)})
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 200:
            raise InvalidInput("Idempotency-Key must be 1-200 characters", field="Idempotency-Key")
        existing = _by_key(session, tenant.id, idempotency_key)
        if existing is not None:
            return _replay(existing, digest), False
    check_uris(body, settings)
    _check_capacity(session, tenant, settings)
    callback = body.callback_url or tenant.default_callback_url  # the default was checked when it was set
    job = Job(
        tenant_id=tenant.id, model_uri=body.model_uri, request=payload, idempotency_key=idempotency_key,
        request_hash=digest, queue=queue_for(body), max_attempts=settings.max_attempts,
        name=body.name, labels=dict(body.labels), user_metadata=body.metadata,
        callback_url=callback, webhook_state="waiting" if callback else None, force=body.force,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = _by_key(session, tenant.id, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _replay(existing, digest), False
    publish_job(session=session, job=job, publisher=publisher)
    return job, True


def publish_job(*, session: Session, job: Job, publisher: Publisher, countdown: float = 0) -> bool:
    """Send the id; a failure is logged, the reaper republishes later."""
    try:
        publisher.publish(job.id, job.queue, countdown=countdown)
    except Exception:
        log.exception("publishing job %s failed; the reaper will republish it", job.id)
        return False
    if session.get_bind().dialect.name == "postgresql":
        # Only a marker for the reaper: losing it in a crash costs one harmless republish, not a job.
        session.execute(text("SET LOCAL synchronous_commit = off"))
    session.execute(update(Job).where(Job.id == job.id).values(last_published_at=utcnow()))
    session.commit()
    return True


def get_job(*, session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        return dt.datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor: not a cursor this API returned", field="cursor") from exc


def list_jobs(
    *, session: Session, tenant_id: str, state: str | None = None, created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None, limit: int = 50, cursor: str | None = None,
    name: str | None = None, labels: dict[str, str] | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first; keyset pagination on (created_at, id). ``labels``: every pair must match."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if state:
        query = query.where(Job.state == state)
    if name:
        query = query.where(Job.name == name)
    for key, value in (labels or {}).items():
        query = query.where(Job.labels[key].as_string() == value)
    if created_after:
        query = query.where(Job.created_at > created_after)
    if created_before:
        query = query.where(Job.created_at < created_before)
    return keyset_page(session, query, limit=limit, cursor=cursor)


def keyset_page(session: Session, query: Any, *, limit: int, cursor: str | None) -> tuple[list[Job], str | None]:
    """One page of ``query`` (jobs), newest first, keyset-paginated on (created_at, id); the API and the console."""
    if cursor:
        c_at, c_id = decode_cursor(cursor)
        query = query.where(or_(Job.created_at < c_at, and_(Job.created_at == c_at, Job.id < c_id)))
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def cancel_job(*, session: Session, tenant_id: str, job_id: str) -> Job:
    """Queued -> cancelled at once; running -> cancel requested (the worker stops within seconds)."""
    job = get_job(session=session, tenant_id=tenant_id, job_id=job_id)
    now = utcnow()
    session.execute(
        update(Job).where(Job.id == job.id, Job.state == JobState.queued.value)
        .values(state=JobState.cancelled.value, cancel_requested=True, finished_at=now, error_code="cancelled",
                error_message="cancelled by request")
    )
    session.execute(
        update(Job).where(Job.id == job.id, Job.state == JobState.running.value).values(cancel_requested=True)
    )
    session.commit()
    session.refresh(job)
    if job.state in (JobState.succeeded.value, JobState.failed.value):
        raise JobFinished(f"job {job.id} already {job.state}")
    return job


def to_public(job: Job) -> JobPublic:
    error = JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
    return JobPublic(
        id=job.id, state=job.state,  # type: ignore[arg-type]
        model_uri=job.model_uri, recipe=job.request.get("recipe") or {}, target=job.request.get("target"),
        progress=Progress(stage=job.progress_stage, fraction=job.progress_fraction),
        attempt=job.attempt, max_attempts=job.max_attempts, cancel_requested=job.cancel_requested,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        metrics=job.metrics, error=error, name=job.name, labels=job.labels or {}, metadata=job.user_metadata,
        callback_url=job.callback_url, webhook=_webhook(job), deduplicated_from=job.dedup_of,
    )


def _webhook(job: Job) -> Webhook | None:
    if not job.callback_url or not job.webhook_state:
        return None
    return Webhook(state=job.webhook_state,  # type: ignore[arg-type]
                   attempts=job.webhook_attempts or 0, next_attempt_at=job.webhook_next_at,
                   log=list(job.webhook_log or []))


def job_logs(*, session: Session, job: Job, after: int, limit: int) -> JobLogs:
    rows = list(session.scalars(
        select(JobLog).where(JobLog.job_id == job.id, JobLog.id > after).order_by(JobLog.id).limit(limit)))
    lines = [JobLogLine(seq=r.id, at=r.at, attempt=r.attempt, level=r.level, message=r.message) for r in rows]
    return JobLogs(data=lines, next_after=lines[-1].seq if lines else after)
