"""The job table: the source of truth. The broker only says "job X is ready"."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from presso.app.core.db import Base, UTCDateTime, utcnow
from presso.app.tenants.models import new_id

JSONType = JSON().with_variant(JSONB(), "postgresql")


class JobState(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_state_lease", "state", "lease_expires_at"),
        Index("ix_jobs_webhook_due", "webhook_state", "webhook_next_at"),
        Index("ix_jobs_tenant_dedup", "tenant_id", "dedup_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued.value)
    queue: Mapped[str] = mapped_column(String(32), default="gpu")
    model_uri: Mapped[str] = mapped_column(Text)
    request: Mapped[dict[str, Any]] = mapped_column(JSONType, comment="The validated JobCreate body.")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))

    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    progress_stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    progress_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    manifest_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(
        String(96), nullable=True, comment="The worker (workers.id) that claimed the current attempt.")
    worker_pid: Mapped[int | None] = mapped_column(
        Integer, nullable=True, comment="The process of that worker that runs the attempt.")
    plan: Mapped[dict[str, Any] | None] = mapped_column(
        JSONType, nullable=True, comment="The resource plan (compression/plan.py).")
    name: Mapped[str | None] = mapped_column(String(200), nullable=True, comment="A name the user chose.")
    labels: Mapped[dict[str, str]] = mapped_column(
        JSONType, default=dict, comment="Key/value labels (filterable: GET /v1/jobs?label=k=v).")
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(
        "metadata", JSONType, nullable=True, comment="Free JSON the user attached (capped in size).")
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True, comment="Webhook of the job's end.")
    webhook_state: Mapped[str | None] = mapped_column(
        String(16), nullable=True, comment="waiting (job not finished), retrying, delivered, failed.")
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_next_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    webhook_log: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSONType, nullable=True, comment="One entry per delivery attempt: at, status, error, ms.")
    force: Mapped[bool] = mapped_column(Boolean, default=False, comment="Run even when a twin succeeded.")
    dedup_key: Mapped[str | None] = mapped_column(
        String(64), nullable=True, comment="sha256 of the job's inputs by content (workers/dedup.py).")
    dedup_of: Mapped[str | None] = mapped_column(
        String(32), nullable=True, comment="The succeeded job whose artifact this one returned.")

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    queued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class Worker(Base):
    """A live worker process (its main process), beaten every ``worker_heartbeat_s``; see workers/liveness.py."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(255), default="")
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class JobLog(Base):
    """One log line of a job's attempt, as the worker logged it (workers/joblog.py); GET /v1/jobs/{id}/logs."""

    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
