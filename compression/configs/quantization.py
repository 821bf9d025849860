"""Weight-quantization methods: rtn, gptq, awq, hqq."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from presso.compression.configs.base import StepConfig
from presso.compression.configs.formats import FP8Config, GPTQRounding, MXFP4Config, NVFP4Config

MIN_GROUP_SIZE = 8
MAX_GROUP_SIZE = 1 << 16  # wider than any layer: a larger group would only mean "per channel"


def check_group_size(value: int) -> int:
    """-1 (per channel) or MIN_GROUP_SIZE..MAX_GROUP_SIZE; one message for every other value (0 included)."""
    if value != -1 and not MIN_GROUP_SIZE <= value <= MAX_GROUP_SIZE:
        raise ValueError(
            f"group_size must be -1 (per channel) or between {MIN_GROUP_SIZE} and {MAX_GROUP_SIZE}, got {value}"
        )
    return value


# An int checked by check_group_size; the schema states the range (with the hole 0..7 in the description).
GroupSize = Annotated[
    int, AfterValidator(check_group_size), Field(json_schema_extra={"minimum": -1, "maximum": MAX_GROUP_SIZE})
]


class QuantOverride(BaseModel):
    """Per-module settings: modules matching ``pattern`` get these instead (mixed precision)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = Field(description="Module pattern, same syntax as targets ('down_proj', 're:layers\\.0\\.').")
    bits: int | None = Field(default=None, ge=2, le=8)
    group_size: GroupSize | None = None
    symmetric: bool | None = None
    skip: bool = Field(default=False, description="Leave matching modules dense.")


class QuantArgs(BaseModel):
    """The scheme every quantizer shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: int = Field(default=4, ge=2, le=8, description="Bits per weight, 2-8.")
    group_size: GroupSize = Field(
        default=128,
        description=f"Input columns sharing one scale: -1 = one scale per output channel, or "
        f"{MIN_GROUP_SIZE}-{MAX_GROUP_SIZE}. A layer whose input width it does not divide uses the largest "
        "divisor not above it (per channel when that is below 16); the default 128 on a layer narrower than "
        "128 falls back to per channel, an explicit size wider than a layer is an error (invalid_recipe, "
        "before any compute); see docs/quantization.md.",
    )
    symmetric: bool = Field(default=True, description="Symmetric (no zero point) or asymmetric.")
    observer: Literal["minmax", "mse"] = Field(
        default="minmax",
        description="How group ranges are chosen: plain min/max (default), or a search over clipping "
        "ratios that minimizes each group's squared weight error (slower; lower weight error does not "
        "always mean lower perplexity: on SmolLM2 RTN W4 g64 minmax scored better, see BENCHMARKS.md).",
    )


class QuantStep(StepConfig, QuantArgs):
    overrides: list[QuantOverride] = Field(
        default_factory=list, description="First matching override wins; e.g. down_proj at 8 bits."
    )

    def group_is_explicit(self, name: str) -> bool:
        """True when module ``name``'s group size was given (by its override or the step), not the default."""
        from presso.compression.configs.base import matches

        for ov in self.overrides:
            if matches(name, ov.pattern):
                return ov.group_size is not None or "group_size" in self.model_fields_set
        return "group_size" in self.model_fields_set

    def scheme_for(self, name: str) -> QuantArgs | None:
        """The scheme for module ``name`` after overrides; None when an override skips it."""
        from presso.compression.configs.base import matches

        for ov in self.overrides:
            if matches(name, ov.pattern):
                if ov.skip:
                    return None
                return QuantArgs(
                    bits=ov.bits if ov.bits is not None else self.bits,
                    group_size=ov.group_size if ov.group_size is not None else self.group_size,
                    symmetric=ov.symmetric if ov.symmetric is not None else self.symmetric,
                    observer=self.observer,
                )
        return QuantArgs(
            bits=self.bits, group_size=self.group_size, symmetric=self.symmetric, observer=self.observer
        )


class RTNConfig(QuantStep):
    """Round-to-nearest weight quantization with per-group scales."""

    method: Literal["rtn"] = "rtn"
    summary: ClassVar[str] = "Round-to-nearest weight quantization (no calibration)."


class GPTQConfig(QuantStep):
    method: Literal["gptq"] = "gptq"
    damp_percent: float = Field(default=0.01, gt=0, lt=1, description="Dampening, fraction of mean diag(H).")
    block_size: int = Field(default=128, ge=1, le=4096, description="Columns per lazy batch update.")
    act_order: bool = Field(default=False, description="Quantize columns in order of decreasing diag(H).")
    static_groups: bool | None = Field(
        default=None,
        description="Where group scales come from. false: each group's scale is chosen from the weights as the "
        "solver has updated them (the IST-DASLab reference); true: from the original weights, fixed before the "
        "solver runs (llm-compressor's default; with act_order the artifact then needs no g_idx). Unset "
        "(default): true with act_order, else false — measured best on wikitext-2 and on both out-of-domain "
        "texts at 4 bits (docs/quantization.md, 'Out-of-domain').",
    )
    observer: Literal["minmax", "mse"] = Field(
        default="mse",
        description="How each group's range is chosen: a search over clipping ratios minimizing the group's "
        "squared weight error (default for GPTQ: on SmolLM2 it beat min-max on wikitext-2 and on both "
        "out-of-domain texts, at 3 and 4 bits; docs/quantization.md), or plain min/max.",
    )
    expert_solve_batch: int = Field(
        default=32, ge=1, le=4096,
        description="Mixture-of-experts: how many experts of one shape and scheme are solved together (one "
        "batched factorisation and column loop instead of one per expert: far fewer GPU kernel launches, the "
        "same codes up to float rounding). 1 = one expert at a time. Capped so a batch's Hessians and factors "
        "take at most 2 GiB (docs/architectures.md). Ignored with act_order.",
    )

    def groups_static(self) -> bool:
        """``static_groups`` as it applies: unset means static only under act_order."""
        return self.act_order if self.static_groups is None else self.static_groups

    needs_calibration: ClassVar[bool] = True
    summary: ClassVar[str] = "GPTQ / OBC second-order weight quantization (calibrated)."


class AWQConfig(QuantStep):
    method: Literal["awq"] = "awq"
    grid: int = Field(default=20, ge=2, le=100, description="Grid points of the activation exponent in [0, 1).")
    solver: Literal["rtn", "gptq"] = Field(default="rtn", description="Quantizer applied after scaling.")
    verify: int = Field(
        default=0, ge=0, le=100,
        description="Re-rank this many of the best exponents (by the linears' exact output error) by the "
        "decoder block's output error on verify_samples sequences; 0 (default) = the linears' error alone, "
        "which measured better at 4 bits on SmolLM2 (BENCHMARKS §1).",
    )
    verify_samples: int = Field(
        default=16, ge=1, le=4096, description="Calibration sequences used for that re-ranking."
    )
    format: Literal["int", "fp8", "nvfp4", "mxfp4"] = Field(
        default="int",
        description="The number format the scales are searched for and the weights written in: 'int' (bits, "
        "group_size, symmetric, observer: pack-quantized), or a float grid, as the fp8 / nvfp4 / mxfp4 steps write "
        "it (scheme: that step's preset, e.g. NVFP4A16; the search and AWQ's clipping search measure the error of "
        "that grid's quantizer; solver gptq = that step's rounding: gptq). docs/formats.md.",
    )
    scheme: Literal["FP8_DYNAMIC", "FP8", "FP8_BLOCK", "NVFP4", "NVFP4A16", "MXFP4", "MXFP4A16"] | None = Field(
        default=None,
        description="With a float format: its preset (fp8: FP8_DYNAMIC, FP8, FP8_BLOCK; nvfp4: NVFP4, NVFP4A16; "
        "mxfp4: MXFP4, MXFP4A16); unset = the fp8 / nvfp4 / mxfp4 step's default.",
    )
    needs_calibration: ClassVar[bool] = True
    summary: ClassVar[str] = "Activation-aware weight quantization: scale search, then RTN or GPTQ (int or float grid)."

    @model_validator(mode="after")
    def _format_fields(self) -> AWQConfig:
        if self.format == "int":
            if self.scheme is not None:
                raise ValueError("scheme applies to a float format (format fp8, nvfp4 or mxfp4)")
            return self
        presets = get_args(FLOAT_STEPS[self.format].model_fields["scheme"].annotation)
        if self.scheme is not None and self.scheme not in presets:
            raise ValueError(f"format {self.format}: scheme must be one of {', '.join(presets)}")
        given = sorted({"bits", "group_size", "symmetric", "observer"} & self.model_fields_set)
        if given or any(not ov.skip for ov in self.overrides):
            raise ValueError(f"format {self.format} fixes the weights' grid: {', '.join(given) or 'overrides'} "
                             "apply to format int (overrides may only skip modules)")
        return self

    def format_step(self) -> GPTQRounding:
        """The fp8 / nvfp4 / mxfp4 step that writes this step's float format (format != int)."""
        fields: dict[str, Any] = {k: getattr(self, k) for k in ("targets", "ignore", "expert_min_tokens",
                                                                 "expert_calibration")}
        if self.scheme is not None:
            fields["scheme"] = self.scheme
        return FLOAT_STEPS[self.format](rounding=self.solver, **fields)


FLOAT_STEPS: dict[str, type[GPTQRounding]] = {"fp8": FP8Config, "nvfp4": NVFP4Config, "mxfp4": MXFP4Config}


class HQQConfig(QuantStep):
    method: Literal["hqq"] = "hqq"
    symmetric: bool = Field(default=False, description="HQQ optimizes zero points; asymmetric by default.")
    iters: int = Field(default=20, ge=1, le=1000, description="Half-quadratic iterations.")
    lp_norm: float = Field(default=0.7, gt=0, le=1, description="p of the sparsity-promoting l_p loss.")
    beta: float = Field(default=10.0, gt=0, description="Initial penalty weight.")
    kappa: float = Field(default=1.01, gt=1, description="Penalty growth per iteration.")
    summary: ClassVar[str] = "Half-quadratic quantization of scales and zero points (no calibration)."
