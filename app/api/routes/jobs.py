"""/v1/jobs: submit, get, list, cancel."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response, status

from presso.app.api.deps import PublisherDep, SessionDep, SettingsDep, TenantDep
from presso.app.core.errors import InvalidInput
from presso.app.core.metrics import JOBS_SUBMITTED
from presso.app.jobs import planning, service
from presso.app.jobs.schemas import JobCreate, JobLogs, JobPublic, JobsPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
StateFilter = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic,
             responses={200: {"description": "Replay of an earlier submit with the same Idempotency-Key"}})
def submit_job(
    body: JobCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep, publisher: PublisherDep,
    response: Response, idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobPublic:
    """Queue a compression job. The same Idempotency-Key with the same body returns the same job. A job that no
    worker class can run is refused (422 ``insufficient_resources``) when its model can be planned cheaply."""
    planned = planning.check_submit(body.model_dump(mode="json"), settings)
    job, created = service.create_job(
        session=session, tenant=tenant, body=body, idempotency_key=idempotency_key,
        settings=settings, publisher=publisher,
    )
    if created and planned is not None:
        job.plan = planned
        session.commit()
    if created:
        JOBS_SUBMITTED.inc()
    else:
        response.status_code = status.HTTP_200_OK
    return service.to_public(job)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep, tenant: TenantDep,
    state: StateFilter | None = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    label: Annotated[list[str] | None, Query(description="key=value; repeat to require several labels")] = None,
) -> JobsPublic:
    """Newest first. Pass ``next_cursor`` back as ``cursor`` for the next page. ``name`` matches exactly;
    every ``label=key=value`` given must match."""
    rows, next_cursor = service.list_jobs(
        session=session, tenant_id=tenant.id, state=state, created_after=_aware(created_after),
        created_before=_aware(created_before), limit=limit, cursor=cursor, name=name, labels=_labels(label),
    )
    return JobsPublic(data=[service.to_public(j) for j in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    return service.to_public(service.get_job(session=session, tenant_id=tenant.id, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """A queued job is cancelled at once; a running one stops within seconds (cancel_requested)."""
    return service.to_public(service.cancel_job(session=session, tenant_id=tenant.id, job_id=job_id))


@router.get("/{job_id}/logs", response_model=JobLogs)
def get_job_logs(
    job_id: str, session: SessionDep, tenant: TenantDep,
    after: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> JobLogs:
    """The worker's log lines of this job (every attempt), oldest first; pass ``next_after`` as ``after`` to
    follow a running job."""
    job = service.get_job(session=session, tenant_id=tenant.id, job_id=job_id)
    return service.job_logs(session=session, job=job, after=after, limit=limit)


def _labels(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"label filter {item[:80]!r} is not key=value", field="label")
        out[key] = value
    return out


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value
