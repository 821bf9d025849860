"""Request and response schemas of the jobs API: JobCreate / JobPublic / JobsPublic / ArtifactManifest."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from presso.compression.spec import JobSpec

MAX_LABELS = 32
MAX_LABEL_VALUE = 128
MAX_METADATA_BYTES = 16 * 1024
LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$"
SERVICE_FIELDS = ("name", "labels", "metadata", "callback_url", "force")


class JobCreate(JobSpec):
    """The body of ``POST /v1/jobs``: the library's ``JobSpec`` (presso.compression.spec), so the API, the CLI
    and the worker read one definition, plus what only the service keeps: a name, labels and metadata."""

    name: str | None = Field(default=None, min_length=1, max_length=200, description="A name for people.")
    labels: dict[str, str] = Field(
        default_factory=dict, max_length=MAX_LABELS,
        description=f"Key/value labels, filterable (GET /v1/jobs?label=team=nlp). At most {MAX_LABELS}; keys "
        f"{LABEL_KEY}, values at most {MAX_LABEL_VALUE} characters.",
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description=f"Free JSON kept with the job (at most {MAX_METADATA_BYTES} bytes as JSON).")
    callback_url: str | None = Field(
        default=None, min_length=1, max_length=2048,
        description="https:// URL that gets a signed POST when the job finishes (Presso-Signature; "
        "docs/sdk.md). It passes the same SSRF guard as model URIs.")
    force: bool = Field(
        default=False, description="Run even when a succeeded job of this tenant had the same inputs (by content: "
        "model files, data, request, Presso version); otherwise that job's artifact is returned without "
        "compressing again (metrics.dedup.of, deduplicated_from).")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for key, item in value.items():
            if not re.match(LABEL_KEY, key):
                raise ValueError(f"label key {key[:80]!r} must match {LABEL_KEY}")
            if len(item) > MAX_LABEL_VALUE:
                raise ValueError(f"label {key!r}: value longer than {MAX_LABEL_VALUE} characters")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        import json

        if value is not None and len(json.dumps(value, separators=(",", ":")).encode()) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
        return value

    def stored(self) -> dict[str, Any]:
        """The compression request the worker reads (JobSpec only; name, labels and metadata are columns)."""
        return {k: v for k, v in super().stored().items() if k not in SERVICE_FIELDS}


class Progress(BaseModel):
    stage: str | None = None
    fraction: float = 0.0


class JobError(BaseModel):
    code: str
    message: str


class Webhook(BaseModel):
    state: Literal["waiting", "retrying", "delivered", "failed"]
    attempts: int
    next_attempt_at: dt.datetime | None = None
    log: list[dict[str, Any]] = Field(default_factory=list, description="One entry per attempt: at, status, "
                                      "error, ms.")


class JobPublic(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model_uri: str
    recipe: dict[str, Any] = Field(description="The recipe as given ({} for a target job: metrics.recipe_used holds "
                                   "the recipe its search chose).")
    target: dict[str, Any] | None = Field(default=None, description="The target as given (a target job).")
    progress: Progress
    attempt: int
    max_attempts: int
    cancel_requested: bool
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    metrics: dict[str, Any] | None = None
    error: JobError | None = None
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None
    deduplicated_from: str | None = Field(default=None, description="The job whose artifact this one returned.")
    webhook: Webhook | None = Field(default=None, description="Delivery of the callback (with callback_url).")


class JobLogLine(BaseModel):
    seq: int = Field(description="Increasing; pass the last one seen as ?after= to read what follows.")
    at: dt.datetime
    attempt: int
    level: str
    message: str


class JobLogs(BaseModel):
    data: list[JobLogLine]
    next_after: int | None = Field(default=None, description="The last seq returned (pass as ?after=).")


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for the next page.")


class ArtifactFile(BaseModel):
    path: str
    size: int
    sha256: str
    url: str = Field(description="Presigned S3 URL (expires in minutes) or an API route for the local store.")


class ArtifactManifest(BaseModel):
    job_id: str
    attempt: int
    created_at: dt.datetime
    expires_in_s: int | None = Field(default=None, description="Lifetime of presigned URLs, if any.")
    files: list[ArtifactFile]
    decoded_files: list[ArtifactFile] = Field(
        default_factory=list,
        description="For losslessly encoded artifacts (*.safetensors.pzst): the plain safetensors, decoded "
        "by the API on request, for clients without Presso's decoder (`presso download` decodes locally).",
    )
