"""Typed return values of the SDK (``presso.client``).

They mirror the API's response bodies (app/jobs/schemas.py) but live on the client side: fields the server adds
later are kept (``extra="allow"``), so an older SDK keeps working against a newer server. For scripts written
against the earlier dict-returning client, every model also answers ``obj["field"]`` and ``obj.get("field")``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "cancelled")


class ApiModel(BaseModel):
    """A response body: unknown fields kept, dict-style access for older scripts."""

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as ISO strings), as the API sent it."""
        return self.model_dump(mode="json")


class Progress(ApiModel):
    stage: str | None = None
    fraction: float = 0.0


class JobError(ApiModel):
    code: str
    message: str = ""


class Webhook(ApiModel):
    """Delivery of a job's callback: state waiting | retrying | delivered | failed, one log entry per attempt."""

    state: str
    attempts: int = 0
    next_attempt_at: dt.datetime | None = None
    log: list[dict[str, Any]] = Field(default_factory=list)


class Job(ApiModel):
    """One job (``GET /v1/jobs/{id}``)."""

    id: str
    state: JobState
    model_uri: str
    recipe: dict[str, Any] = Field(default_factory=dict)
    target: dict[str, Any] | None = None
    progress: Progress = Field(default_factory=Progress)
    attempt: int = 0
    max_attempts: int = 0
    cancel_requested: bool = False
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    metrics: dict[str, Any] | None = None
    error: JobError | None = None
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None
    deduplicated_from: str | None = None
    webhook: Webhook | None = None

    @property
    def done(self) -> bool:
        """True in a terminal state (succeeded, failed, cancelled)."""
        return self.state in TERMINAL


class JobPage(ApiModel):
    """One page of ``GET /v1/jobs``; pass ``next_cursor`` back as ``cursor``."""

    data: list[Job]
    next_cursor: str | None = None


class ArtifactFile(ApiModel):
    path: str
    size: int
    sha256: str
    url: str


class Artifact(ApiModel):
    """The manifest of a succeeded job (``GET /v1/jobs/{id}/artifact``)."""

    job_id: str = ""
    attempt: int = 0
    created_at: dt.datetime | None = None
    expires_in_s: int | None = None
    files: list[ArtifactFile]
    decoded_files: list[ArtifactFile] = Field(default_factory=list)


class Method(ApiModel):
    """One compression method of ``GET /v1/methods`` with the JSON schema of its parameters."""

    method: str
    summary: str = ""
    needs_calibration: bool = False
    lossy: bool = True
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")


class Report(ApiModel):
    """The per-layer breakdown of an artifact (report.json): ``layers`` is one dict per compressed layer."""

    layers: list[dict[str, Any]] = Field(default_factory=list)


class Plan(ApiModel):
    """A resource plan (``POST /v1/plan``, ``GET /v1/jobs/{id}/plan``): ``status`` is "planned" (with the estimates
    per worker class and ``refusal``, the message a submit would be refused with, or None) or "unknown" (with
    ``reason``)."""

    status: str
    refusal: str | None = None
    reason: str | None = None


class LogEntry(ApiModel):
    """One line of a job's log (``GET /v1/jobs/{id}/logs``)."""

    seq: int
    at: dt.datetime
    level: str
    message: str
    attempt: int = 0


class LogPage(ApiModel):
    data: list[LogEntry]
    next_after: int | None = Field(default=None, description="Pass as ``after`` to read the lines that follow.")
