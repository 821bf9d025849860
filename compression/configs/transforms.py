"""Function-preserving transforms run before a quantization step: smoothquant, rotate. Torch-free.

A transform changes the weights but not the function the model computes (up to float rounding); it prepares the
model for a later step (int8 / fp8 W8A8, gptq) by moving activation outliers into the weights. It must come
before the quantization steps it prepares (the recipe checks the order). Engines:
compression/engines/quantization/smoothquant/; docs/formats.md ("SmoothQuant").
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from presso.compression.configs.base import StepConfig


class AlphaOverride(BaseModel):
    """Linears matching ``pattern`` (and the input group they read) get this migration strength."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = Field(description="Module pattern, same syntax as targets ('down_proj', 're:layers\\.0\\.').")
    alpha: float = Field(ge=0, le=1, description="Migration strength for the matching input groups.")


class SmoothQuantConfig(StepConfig):
    """SmoothQuant (Xiao et al. 2023): per input channel j, ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``;
    the producer of X (a norm, or a linear) is divided by ``s`` and the linears reading X are multiplied by it."""

    method: Literal["smoothquant"] = "smoothquant"
    alpha: float = Field(
        default=0.5, ge=0, le=1,
        description="Migration strength: 0 moves no difficulty into the weights' scale, 1 all of it (activation "
        "per-channel maxima flattened). 0.5 is the paper's default for most models.")
    overrides: list[AlphaOverride] = Field(
        default_factory=list, max_length=64,
        description="Per-layer alpha: the first override matching any linear of an input group sets that group's "
        "alpha (e.g. [{\"pattern\": \"re:layers\\\\.0\\\\.\", \"alpha\": 0.8}]).")
    search: bool = Field(
        default=False,
        description="Choose alpha per input group on the calibration data: every alpha of the grid (and no "
        "smoothing) is tried and the one with the lowest output error of the group's linears under "
        "search_format W8A8 fake quantization (weights per channel, activations per token) is kept. Overrides "
        "still win where they match.")
    grid: int = Field(default=10, ge=2, le=50, description="Search candidates alpha = i / grid, i = 0..grid.")
    search_format: Literal["int8", "fp8"] = Field(
        default="int8", description="The W8A8 format the search's loss simulates (the step that follows).")
    search_tokens: int = Field(
        default=2048, ge=64, le=65536,
        description="Calibration tokens per input group kept (a random subset) to measure the search loss.")
    producers: Literal["norm", "all"] = Field(
        default="norm",
        description="Which producers absorb 1/s: 'norm' (default, as llm-compressor's mappings: input_layernorm "
        "-> q/k/v, post_attention_layernorm -> gate/up), or 'all' (also linears such as v_proj -> o_proj and "
        "up_proj -> down_proj, where the fold is verified exact).")
    needs_calibration: ClassVar[bool] = True
    lossy: ClassVar[bool] = False
    precedes_quantization: ClassVar[bool] = True  # the recipe refuses it after a lossy step
    summary: ClassVar[str] = ("SmoothQuant: activation outliers migrated into the weights, folded into the preceding "
                              "norm / linear (before int8 / fp8 / gptq).")

    def alpha_for(self, names: list[str]) -> float | None:
        """The override alpha of an input group (its linears' names), or None."""
        from presso.compression.configs.base import matches

        for ov in self.overrides:
            if any(matches(n, ov.pattern) for n in names):
                return ov.alpha
        return None


class RotateConfig(StepConfig):
    """An orthogonal rotation of the residual stream folded into the weights (QuaRot / SpinQuant R1), with the
    RMSNorm weights absorbed first: the model computes the same function, with activation outliers spread over
    all channels, before a W4A4 / W4A8 step."""

    method: Literal["rotate"] = "rotate"
    rotation: Literal["hadamard", "random"] = Field(
        default="hadamard",
        description="'hadamard': a randomized Hadamard matrix (QuaRot's; for a hidden size 2^k*m with m odd, "
        "Hadamard(2^k) (x) a random orthogonal m x m), or 'random': a random orthogonal matrix.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the random signs / matrix.")
    lossy: ClassVar[bool] = False
    precedes_quantization: ClassVar[bool] = True
    summary: ClassVar[str] = ("Offline Hadamard rotation of the residual stream (QuaRot R1), norms absorbed, folded "
                              "into the weights (before W4A4 / W4A8).")

    @model_validator(mode="after")
    def _whole_model(self) -> RotateConfig:
        if self.targets != ["*"] or self.ignore != ["lm_head"]:
            raise ValueError("rotate transforms the whole residual stream (every block, the embedding and the head): "
                             "targets / ignore do not apply")
        return self
