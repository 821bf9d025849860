"""Torch-free description of one local compression run (what a worker or the CLI hands the library).

Paths here are local files the caller already fetched; URIs are the service's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from presso.compression.recipe import MAX_FALLBACKS, Recipe, check_fallback_count, check_total_steps


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gate(_Strict):
    max_ppl_increase_pct: float | None = Field(default=None, ge=0, description="Max perplexity increase, %.")
    max_kl: float | None = Field(default=None, ge=0, description="Max mean KL(original || compressed), nats/token.")


class CalibrationInput(_Strict):
    path: Path | None = Field(default=None, description="Text, JSONL ({'text': ...}) or token-id (.npy/.json) file.")
    samples: int = Field(default=64, ge=1, le=4096)
    seq_len: int = Field(default=512, ge=16, le=32768)
    seed_prompt: str = Field(default="The", description="Used when no file is given: the model writes its own text.")


class EvaluationInput(_Strict):
    enabled: bool = True
    path: Path | None = Field(default=None, description="Evaluation text; none -> text the base model generates.")
    windows: int = Field(default=8, ge=1, le=1024)
    seq_len: int = Field(default=512, ge=16, le=32768)
    gate: Gate | None = None
    latency: bool = Field(default=True, description="Measure forward latency before/after.")


class LocalJobSpec(_Strict):
    model_dir: Path
    out_dir: Path
    recipe: Recipe
    fallbacks: list[Recipe] = Field(
        default_factory=list, max_length=MAX_FALLBACKS, description="Tried in order when the gate is missed."
    )
    calibration: CalibrationInput = Field(default_factory=CalibrationInput)
    evaluation: EvaluationInput = Field(default_factory=EvaluationInput)
    output_format: Literal["compressed", "dense"] = "compressed"
    sparse_format: Literal["dense", "sparse-bitmask"] = Field(
        default="dense", description="Sparse layers: dense (loads everywhere) or compressed-tensors sparse-bitmask "
        "(smaller; presso.load only, plain transformers refuses it).")
    output_encoding: Literal["lossless"] | None = Field(
        default=None, description="'lossless': PZST-encode the finished artifact's safetensors (exact).")
    device: str | None = Field(default=None, description="'cuda', 'cpu' or None (CUDA when present).")
    seed: int = 0
    max_params: int | None = Field(default=None, description="Refuse models declaring more parameters.")
    overwrite: bool = Field(
        default=False,
        description="out_dir may hold a previous Presso artifact (presso.json), whose files are then replaced; "
        "anything else in a non-empty out_dir is refused (compression.io.outdir).",
    )

    @field_validator("fallbacks", mode="before")
    @classmethod
    def _fallback_count(cls, fallbacks: Any) -> Any:
        return check_fallback_count(fallbacks)

    @field_validator("fallbacks")
    @classmethod
    def _total_steps(cls, fallbacks: list[Recipe], info: ValidationInfo) -> list[Recipe]:
        return check_total_steps(info.data.get("recipe"), fallbacks)
