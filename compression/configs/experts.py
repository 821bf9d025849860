"""Expert-level methods on mixture-of-experts models: expert_prune, expert_merge."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from presso.compression.configs.base import StepConfig


class ExpertPruneConfig(StepConfig):
    method: Literal["expert_prune"] = "expert_prune"
    ratio: float | None = Field(
        default=0.25, gt=0, lt=1,
        description="Fraction of the routed experts removed from every MoE layer (rounded to a whole count).",
    )
    count: int | None = Field(
        default=None, ge=1, le=65536,
        description="Number of routed experts removed from every MoE layer; overrides ratio.",
    )
    criterion: Literal["reap", "frequency", "contribution"] = Field(
        default="reap",
        description="'reap': mean over the tokens routed to an expert of gate weight x ||expert output|| "
        "(REAP); 'frequency': number of calibration tokens routed to it; 'contribution': gate weight x "
        "||expert output|| summed over all calibration tokens (frequency x REAP). The lowest-scoring experts go.",
    )
    needs_calibration: ClassVar[bool] = True
    summary: ClassVar[str] = ("Remove the least used / least contributing experts of every MoE layer and their "
                              "router rows; a smaller checkpoint of the same architecture.")

    @model_validator(mode="after")
    def _one_amount(self) -> ExpertPruneConfig:
        if self.count is not None:
            object.__setattr__(self, "ratio", None)
        elif self.ratio is None:
            raise ValueError("give ratio or count")
        return self


class ExpertMergeConfig(StepConfig):
    method: Literal["expert_merge"] = "expert_merge"
    ratio: float | None = Field(
        default=0.25, gt=0, lt=1,
        description="Fraction of the routed experts of every MoE layer merged away (rounded to a whole count).",
    )
    count: int | None = Field(
        default=None, ge=1, le=65536,
        description="Number of routed experts of every MoE layer merged away; overrides ratio.",
    )
    needs_calibration: ClassVar[bool] = True
    # averaged weights leave a quantization grid or a sparsity pattern: the recipe refuses it after a lossy step
    precedes_quantization: ClassVar[bool] = True
    summary: ClassVar[str] = ("Merge the experts of every MoE layer into its most used ones by router-logit "
                              "similarity (MC-SMoE-style, frequency-weighted averages); a smaller checkpoint.")

    @model_validator(mode="after")
    def _one_amount(self) -> ExpertMergeConfig:
        if self.count is not None:
            object.__setattr__(self, "ratio", None)
        elif self.ratio is None:
            raise ValueError("give ratio or count")
        return self
