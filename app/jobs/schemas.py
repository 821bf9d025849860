"""Request and response schemas of the jobs API: JobCreate / JobPublic / JobsPublic / ArtifactManifest."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from presso.compression.spec import JobSpec


class JobCreate(JobSpec):
    """The body of ``POST /v1/jobs``: the library's ``JobSpec`` itself (presso.compression.spec), so the API,
    the CLI and the worker read one definition."""


class Progress(BaseModel):
    stage: str | None = None
    fraction: float = 0.0


class JobError(BaseModel):
    code: str
    message: str


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
