"""Low-rank methods: svd, svd_llm, and eora error compensation."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from presso.compression.configs.base import StepConfig


class SVDConfig(StepConfig):
    method: Literal["svd"] = "svd"
    ratio: float | None = Field(
        default=0.2, gt=0, lt=1, description="Fraction of the targeted layers' parameters removed."
    )
    energy: float | None = Field(
        default=None, gt=0, le=1, description="Alternative: keep the smallest rank retaining this spectral energy."
    )
    rank_multiple: int = Field(
        default=1, ge=1, le=1024,
        description="Round every rank down to a multiple of this (never below one multiple): e.g. the group "
        "size of a quantization step that follows, so the B factor's input width splits into whole groups.",
    )
    summary: ClassVar[str] = "Truncated SVD of each weight into two smaller Linear layers."

    @model_validator(mode="after")
    def _one(self) -> SVDConfig:
        if self.energy is not None:
            object.__setattr__(self, "ratio", None)
        elif self.ratio is None:
            raise ValueError("give ratio or energy")
        return self


class SVDLLMConfig(StepConfig):
    method: Literal["svd_llm"] = "svd_llm"
    ratio: float = Field(default=0.2, gt=0, lt=1, description="Fraction of the targeted layers' parameters removed.")
    allocation: Literal["uniform", "global"] = Field(
        default="global", description="'global': per-layer ranks from one parameter budget."
    )
    rank_multiple: int = Field(
        default=1, ge=1, le=1024,
        description="Round every rank down to a multiple of this (never below one multiple): e.g. the group "
        "size of a quantization step that follows, so the B factor's input width splits into whole groups.",
    )
    needs_calibration: ClassVar[bool] = True
    summary: ClassVar[str] = "Truncation-aware (whitened) SVD with per-layer ranks from a global budget."


class EoRAConfig(StepConfig):
    method: Literal["eora"] = "eora"
    rank: int = Field(default=32, ge=1, le=4096, description="Rank of the residual per layer.")
    needs_calibration: ClassVar[bool] = True
    lossy: ClassVar[bool] = False
    summary: ClassVar[str] = "EoRA: low-rank residual in the activation eigenspace compensating earlier steps."
