"""The console's reads, every one scoped by tenant like the API's (``Job.tenant_id == tenant``).

The jobs list is the API's keyset pagination (``presso.app.jobs.service``: newest first on
(created_at, id), the same cursor format) with two more filters the console offers: a recipe method and
a model URI substring.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

from sqlalchemy import Text, and_, cast, exists, func, literal_column, or_, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from presso.app.jobs.models import Job, JobState
from presso.app.jobs.service import keyset_page

MAX_COMPARE = 100


def _method_filter(session: Session, method: str) -> ColumnElement[bool]:
    """Any step of the job's recipe uses ``method``."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        steps = type_coerce(Job.request, JSONB)["recipe"]["steps"]
        return steps.contains([{"method": method}])  # JSONB @>
    if dialect == "sqlite":
        each = func.json_each(Job.request, "$.recipe.steps").table_valued("value").alias("steps")
        return exists(select(literal_column("1")).select_from(each)
                      .where(func.json_extract(each.c.value, "$.method") == method))
    return cast(Job.request, Text).contains(json.dumps({"method": method})[1:-1])  # pragma: no cover


def list_jobs(
    session: Session, tenant_id: str, *, state: str | None = None, method: str | None = None,
    model: str | None = None, created_after: dt.datetime | None = None, created_before: dt.datetime | None = None,
    limit: int = 50, cursor: str | None = None, labels: dict[str, str] | None = None,
) -> tuple[list[Job], str | None]:
    query = select(Job).where(Job.tenant_id == tenant_id)
    for key, value in (labels or {}).items():  # as GET /v1/jobs?label=key=value
        query = query.where(Job.labels[key].as_string() == value)
    if state:
        query = query.where(Job.state == state)
    if method:
        query = query.where(_method_filter(session, method))
    if model:
        query = query.where(func.lower(Job.model_uri).contains(model.lower(), autoescape=True))
    if created_after:
        query = query.where(Job.created_at > created_after)
    if created_before:
        query = query.where(Job.created_at < created_before)
    return keyset_page(session, query, limit=limit, cursor=cursor)


def jobs_by_ids(session: Session, tenant_id: str, ids: Sequence[str]) -> list[Job]:
    """The tenant's jobs among ``ids`` (others' and unknown ids are simply absent), oldest first."""
    ids = list(dict.fromkeys(ids))[:MAX_COMPARE]
    if not ids:
        return []
    return list(session.scalars(select(Job).where(Job.tenant_id == tenant_id, Job.id.in_(ids))
                                .order_by(Job.created_at, Job.id)))


def models_with_results(session: Session, tenant_id: str, limit: int = 200) -> list[tuple[str, int]]:
    """Model URIs of the tenant's succeeded jobs, with how many, most recent first."""
    rows = session.execute(
        select(Job.model_uri, func.count(), func.max(Job.created_at))
        .where(Job.tenant_id == tenant_id, Job.state == JobState.succeeded.value)
        .group_by(Job.model_uri).order_by(func.max(Job.created_at).desc()).limit(limit)
    ).all()
    return [(str(uri), int(n)) for uri, n, _ in rows]


def succeeded_of_model(session: Session, tenant_id: str, model_uri: str, limit: int = MAX_COMPARE) -> list[Job]:
    return list(session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.model_uri == model_uri,
                          Job.state == JobState.succeeded.value)
        .order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    ))


def queue_position(session: Session, job: Job) -> int | None:
    """1 + the queued jobs of any tenant ahead of this one on its queue (None unless queued). A count only:
    nothing about those jobs is shown."""
    if job.state != JobState.queued.value:
        return None
    ahead = session.scalar(
        select(func.count()).select_from(Job).where(
            Job.state == JobState.queued.value, Job.queue == job.queue,
            or_(Job.queued_at < job.queued_at, and_(Job.queued_at == job.queued_at, Job.id < job.id)),
        )
    )
    return int(ahead or 0) + 1
