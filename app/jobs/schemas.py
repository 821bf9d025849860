"""Request and response schemas of the jobs API: JobCreate / JobPublic / JobsPublic / ArtifactManifest."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from presso.compression.recipe import (
    MAX_FALLBACKS,
    MAX_TOTAL_STEPS,
    Recipe,
    check_fallback_count,
    check_total_steps,
)
from presso.compression.spec import Gate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibrationRequest(_Strict):
    uri: str | None = Field(default=None, max_length=2048, description="Text/JSONL file (s3, https, file).")
    samples: int = Field(default=64, ge=1, le=4096)
    seq_len: int = Field(default=512, ge=16, le=32768)


class EvaluationRequest(_Strict):
    enabled: bool = True
    uri: str | None = Field(default=None, max_length=2048, description="Evaluation text (s3, https, file).")
    windows: int = Field(default=8, ge=1, le=1024)
    seq_len: int = Field(default=512, ge=16, le=32768)
    gate: Gate | None = None
    latency: bool = True


class OutputRequest(_Strict):
    format: Literal["compressed", "dense"] = "compressed"
    sparse_format: Literal["dense", "sparse-bitmask"] = Field(
        default="dense", description="Sparse layers: dense (loads everywhere) or sparse-bitmask (smaller; "
        "presso.load only, plain transformers refuses it).")
    encoding: Literal["lossless"] | None = Field(
        default=None, description="'lossless': PZST-encode the artifact's safetensors (exact; `presso download` "
        "decodes). A recipe's last step 'lossless' does the same.")


class JobCreate(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model_uri": "s3://models/llama-tiny",
                    "recipe": {"steps": [{"method": "rtn", "bits": 4, "group_size": 64}]},
                    "evaluation": {"windows": 4, "seq_len": 256},
                }
            ]
        },
    )

    model_uri: str = Field(min_length=1, max_length=2048, description="s3://, https://, hf:// or file://")
    recipe: Recipe
    calibration: CalibrationRequest | None = None
    evaluation: EvaluationRequest | None = None
    fallbacks: list[Recipe] = Field(
        default_factory=list, max_length=MAX_FALLBACKS,
        description=f"At most {MAX_FALLBACKS}; with the recipe, at most {MAX_TOTAL_STEPS} steps in all.",
    )
    output: OutputRequest = Field(default_factory=OutputRequest)

    @field_validator("fallbacks", mode="before")
    @classmethod
    def _fallback_count(cls, fallbacks: Any) -> Any:
        return check_fallback_count(fallbacks)

    @field_validator("fallbacks")
    @classmethod
    def _total_steps(cls, fallbacks: list[Recipe], info: ValidationInfo) -> list[Recipe]:
        return check_total_steps(info.data.get("recipe"), fallbacks)


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
    recipe: dict[str, Any]
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
