"""Pruning methods: magnitude, wanda, sparsegpt, prune_structured."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from presso.compression.configs.base import StepConfig
from presso.compression.configs.quantization import GroupSize

_NM = re.compile(r"^(\d+):(\d+)$")


def parse_nm(pattern: str | None) -> tuple[int, int] | None:
    if pattern is None:
        return None
    m = _NM.match(pattern)
    assert m is not None  # validated by the config
    return int(m.group(1)), int(m.group(2))


class SparsityStep(StepConfig):
    sparsity: float = Field(default=0.5, ge=0, lt=1, description="Fraction of weights set to zero, in [0, 1).")
    pattern: str | None = Field(
        default=None,
        description="'N:M' semi-structured pattern (N zeros... kept per M, e.g. '2:4'); overrides sparsity.",
    )

    @field_validator("pattern")
    @classmethod
    def _nm(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = _NM.match(v)
        if not m:
            raise ValueError("pattern must look like 'N:M', e.g. '2:4'")
        n, m_ = int(m.group(1)), int(m.group(2))
        if not (0 < n < m_ <= 64):
            raise ValueError("N:M needs 0 < N < M <= 64 (N weights kept out of every M)")
        return v

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_nm(self.pattern)

    @property
    def effective_sparsity(self) -> float:
        nm = self.nm
        return 1 - nm[0] / nm[1] if nm else self.sparsity


class MagnitudeConfig(SparsityStep):
    method: Literal["magnitude"] = "magnitude"
    scope: Literal["layer", "global"] = Field(default="layer", description="Threshold per layer or global.")
    summary: ClassVar[str] = "Magnitude pruning, unstructured or N:M (no calibration)."


class AllocationMixin(StepConfig):
    allocation: Literal["uniform", "owl"] = Field(
        default="uniform", description="'owl': outlier-weighted non-uniform sparsity across blocks."
    )
    owl_lambda: float = Field(default=0.08, ge=0, lt=1, description="OWL: max deviation from mean sparsity.")
    owl_m: float = Field(default=5.0, gt=0, description="OWL: outlier threshold, multiple of the mean score.")


def check_owl_nm(cfg: SparsityStep) -> None:
    if cfg.pattern is not None and getattr(cfg, "allocation", "uniform") == "owl":
        raise ValueError(
            "allocation='owl' varies the sparsity per block, while an N:M pattern fixes it per group of M; "
            "use one or the other"
        )


class WandaConfig(SparsityStep, AllocationMixin):
    method: Literal["wanda"] = "wanda"
    needs_calibration: ClassVar[bool] = True
    summary: ClassVar[str] = "Wanda: |W| x ||X|| importance per output row (calibrated)."

    @model_validator(mode="after")
    def _owl_nm(self) -> WandaConfig:
        check_owl_nm(self)
        return self


class SparseGPTConfig(SparsityStep, AllocationMixin):
    method: Literal["sparsegpt"] = "sparsegpt"
    block_size: int = Field(default=128, ge=1, le=4096)
    damp_percent: float = Field(default=0.01, gt=0, lt=1)
    bits: int | None = Field(default=None, ge=2, le=8, description="Joint mode: also quantize to these bits.")
    group_size: GroupSize = Field(
        default=128, description="Joint mode group size: -1 per channel, or 8-65536 (as for the quantizers)."
    )
    symmetric: bool = True
    needs_calibration: ClassVar[bool] = True
    summary: ClassVar[str] = "SparseGPT OBS pruning, unstructured or N:M, optionally joint with quantization."

    @model_validator(mode="after")
    def _owl_nm(self) -> SparseGPTConfig:
        check_owl_nm(self)
        return self


class PruneStructuredConfig(StepConfig):
    method: Literal["prune_structured"] = "prune_structured"
    ratio: float | None = Field(
        default=0.2, gt=0, lt=1, description="Fraction of the blocks' parameters removed (MLP channels + heads)."
    )
    mlp_ratio: float | None = Field(default=None, ge=0, lt=1, description="Per-component: MLP channels removed.")
    head_ratio: float | None = Field(default=None, ge=0, lt=1, description="Per-component: attention heads removed.")
    drop_blocks: int = Field(
        default=0, ge=0, le=1024, description="Whole decoder blocks removed (least important first)."
    )
    needs_calibration: ClassVar[bool] = True
    summary: ClassVar[str] = "Remove MLP channels / attention heads / blocks; a smaller dense model."

    @model_validator(mode="after")
    def _one_target(self) -> PruneStructuredConfig:
        if self.mlp_ratio is not None or self.head_ratio is not None:
            object.__setattr__(self, "ratio", None)
        elif self.ratio is None and self.drop_blocks == 0:
            raise ValueError("give ratio, or mlp_ratio/head_ratio, or drop_blocks")
        return self
