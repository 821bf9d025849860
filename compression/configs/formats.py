"""Deployment number formats: fp8, int8 (W8A8), nvfp4, mxfp4. Torch-free.

Each step quantizes the targeted Linear weights into the format and, where the scheme says so, their input
activations (simulated in the job's evaluation, written as the compressed-tensors ``input_activations`` the
serving engine applies). Presets carry compressed-tensors' scheme names (``FP8_DYNAMIC``, ``FP8``,
``FP8_BLOCK``, ``W8A8``, ``NVFP4``, ``NVFP4A16``, ``MXFP4``, ``MXFP4A16``) so users recognise them.
Math and conventions: compression/core/floatquant.py; docs/quantization.md ("Deployment formats").
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from presso.compression.configs.base import StepConfig

# preset -> (weight strategy, activation mode); activation modes:
#   dynamic_token: scales per token, per call; dynamic_group: per 128 input columns, per call;
#   static_tensor: one calibrated scale per layer; none: weight-only (A16)
FP8_PRESETS: dict[str, tuple[str, str]] = {
    "FP8_DYNAMIC": ("channel", "dynamic_token"),
    "FP8": ("tensor", "static_tensor"),
    "FP8_BLOCK": ("block", "dynamic_group"),
}


class FormatStep(StepConfig):
    """A step that writes a deployment format; calibrated only when its scheme needs it."""

    needs_calibration: ClassVar[bool] = True  # it may: see uses_calibration()

    def uses_calibration(self) -> bool:
        return False


class GPTQRounding(FormatStep):
    """Formats whose weights may be rounded by GPTQ onto their own grid (fp8, nvfp4, mxfp4)."""

    rounding: Literal["rtn", "gptq"] = Field(
        default="rtn",
        description="Weight rounding onto the format's grid: round-to-nearest (default), or GPTQ (calibrated: the "
        "second-order OBS error compensation with each column rounded to the format's values; the format's scales "
        "stay the round-to-nearest ones).")
    damp_percent: float = Field(default=0.01, gt=0, lt=1, description="GPTQ dampening, fraction of mean diag(H).")
    block_size: int = Field(default=128, ge=1, le=4096, description="GPTQ columns per lazy batch update.")


class FP8Config(GPTQRounding):
    """FP8 E4M3 weights (per channel, per tensor or 128x128 blocks) and FP8 activations."""

    method: Literal["fp8"] = "fp8"
    scheme: Literal["FP8_DYNAMIC", "FP8", "FP8_BLOCK"] = Field(
        default="FP8_DYNAMIC",
        description="Preset: FP8_DYNAMIC = per-channel weights, dynamic per-token activations (no calibration); "
        "FP8 = per-tensor weights, static per-tensor activations calibrated on the calibration data; "
        "FP8_BLOCK = 128x128 weight blocks, dynamic per-128-column activation groups (a layer whose input width "
        "is not a multiple of 128 uses per-token activations; recorded per layer).",
    )
    weights: Literal["channel", "tensor", "block"] | None = Field(
        default=None, description="Override the preset's weight scales.")
    activations: Literal["dynamic_token", "dynamic_group", "static_tensor", "none"] | None = Field(
        default=None, description="Override the preset's activation quantization ('none': FP8 weight-only, W8A16).")
    summary: ClassVar[str] = "FP8 E4M3 weights and activations (FP8_DYNAMIC, FP8 static, FP8_BLOCK)."

    def weight_strategy(self) -> str:
        return self.weights or FP8_PRESETS[self.scheme][0]

    def act_mode(self) -> str:
        return self.activations or FP8_PRESETS[self.scheme][1]

    def uses_calibration(self) -> bool:
        return self.act_mode() == "static_tensor" or self.rounding == "gptq"


class INT8Config(FormatStep):
    """INT8 W8A8: symmetric per-channel int8 weights (RTN or GPTQ) and int8 activations."""

    method: Literal["int8"] = "int8"
    rounding: Literal["rtn", "gptq"] = Field(
        default="rtn",
        description="Weight rounding: round-to-nearest (default), or GPTQ (calibrated, second-order). On SmolLM2 "
        "GPTQ at 8 bits per channel measured worse than RTN (BENCHMARKS §1, 'Deployment formats'), so RTN is "
        "the default.")
    activations: Literal["dynamic_token", "static_tensor", "none"] = Field(
        default="dynamic_token",
        description="Per-token scales computed per call (W8A8 preset), one calibrated static scale per layer, "
        "or 'none' (int8 weights only; written pack-quantized like rtn bits=8).")
    damp_percent: float = Field(default=0.01, gt=0, lt=1, description="GPTQ dampening, fraction of mean diag(H).")
    block_size: int = Field(default=128, ge=1, le=4096, description="GPTQ columns per lazy batch update.")
    summary: ClassVar[str] = "INT8 W8A8: per-channel int8 weights (GPTQ or RTN), int8 activations."

    def uses_calibration(self) -> bool:
        return self.rounding == "gptq" or self.activations == "static_tensor"


class NVFP4Config(GPTQRounding):
    """NVFP4: FP4 E2M1 weights in groups of 16 with FP8 scales and a per-tensor FP32 global scale."""

    method: Literal["nvfp4"] = "nvfp4"
    scheme: Literal["NVFP4", "NVFP4A16"] = Field(
        default="NVFP4",
        description="NVFP4 = W4A4 (activations in NVFP4: group scales per call under a calibrated per-layer "
        "global scale); NVFP4A16 = weight-only.")
    summary: ClassVar[str] = "NVFP4 W4A4 (calibrated activation global scales) or W4A16."

    def uses_calibration(self) -> bool:
        return self.scheme == "NVFP4" or self.rounding == "gptq"


class MXFP4Config(GPTQRounding):
    """MXFP4 (OCP Microscaling): FP4 E2M1 weights in groups of 32 with E8M0 (power-of-two) scales."""

    method: Literal["mxfp4"] = "mxfp4"
    scheme: Literal["MXFP4", "MXFP4A16"] = Field(
        default="MXFP4", description="MXFP4 = W4A4 (activations MXFP4 per call); MXFP4A16 = weight-only.")
    scale_rule: Literal["round", "floor"] = Field(
        default="round",
        description="Group exponent: 'round' (compressed-tensors / llm-compressor: the absmax rounded to a power "
        "of two first) or 'floor' (the OCP MX spec's floor(log2 absmax) - 2).")
    summary: ClassVar[str] = "MXFP4 W4A4 or W4A16 (groups of 32, E8M0 scales)."

    def uses_calibration(self) -> bool:
        return self.rounding == "gptq"
