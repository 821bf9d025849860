"""The ``target`` of a job: a budget, a quality floor and the space of per-layer levels searched. Torch-free.

A target job says what it wants instead of (or beside) how: ``{"bits_per_weight": 3.5}`` or
``{"max_bytes": 5e9, "max_ppl_increase_pct": 2}``. The worker searches per-layer levels (method, bits,
group size) under the budget and returns a normal recipe with per-layer ``overrides``
(compression/search/job.py). Every user-controlled size is capped here, before any work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from presso.compression.configs.base import StepConfig
from presso.compression.configs.quantization import GroupSize

SEARCH_METHODS = ("rtn", "gptq")
SEARCH_BITS = (2, 3, 4, 8)
MAX_GROUP_SIZES = 4
MAX_LEVELS = 16  # methods x bits x group sizes: each level is one quantized copy of every layer in the search
MAX_CANDIDATES = 8  # full evaluations (one compression + evaluation each)
MAX_GENERATIONS = 500
MAX_OFFSPRING = 32
MAX_FITNESS_SAMPLES = 256
FLOORS = ("max_ppl_increase_pct", "max_kl", "min_top1_agreement", "max_flip_rate")  # each is a Gate limit too


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Method = Literal["rtn", "gptq"]
Bits = Literal[2, 3, 4, 8]


def _default_methods() -> list[Method]:
    return ["gptq"]


def _default_bits() -> list[Bits]:
    return [2, 3, 4, 8]


class SearchSpace(_Strict):
    """The per-layer levels the search chooses from: every method x bits x group size."""

    methods: list[Method] = Field(
        default_factory=_default_methods, min_length=1, max_length=len(SEARCH_METHODS),
        description="Quantizers a layer may get (one recipe step per method used).")
    bits: list[Bits] = Field(
        default_factory=_default_bits, min_length=1, max_length=len(SEARCH_BITS),
        description="Bit widths a layer may get.")
    group_sizes: list[GroupSize] = Field(
        default_factory=lambda: [128], min_length=1, max_length=MAX_GROUP_SIZES,
        description="Group sizes a layer may get (-1 = per channel; a group wider than a layer means per "
        f"channel there). At most {MAX_GROUP_SIZES}.")
    symmetric: bool = True
    targets: list[str] = Field(default_factory=lambda: ["*"], max_length=64,
                               description="Linear modules searched (as a step's targets).")
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"], max_length=64,
                              description="Modules left dense (as a step's ignore).")

    @field_validator("methods", "bits", "group_sizes")
    @classmethod
    def _distinct(cls, values: list[int] | list[str]) -> list[int] | list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"values must be distinct, got {values}")
        return values

    @field_validator("targets", "ignore")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        return StepConfig._valid_patterns(patterns)  # the steps' own pattern rules

    @model_validator(mode="after")
    def _few_levels(self) -> SearchSpace:
        n = len(self.methods) * len(self.bits) * len(self.group_sizes)
        if n > MAX_LEVELS:
            raise ValueError(f"the search space has {n} levels (methods x bits x group_sizes); at most {MAX_LEVELS}")
        return self


class TargetSpec(_Strict):
    """What the artifact must achieve: a budget (at most one kind) and/or a quality floor, at least one."""

    bits_per_weight: float | None = Field(
        default=None, gt=1, le=32,
        description="Mean stored bits per weight of the block linears, scales and zero points included (the "
        "job's bits_per_weight metric).")
    max_bytes: int | None = Field(default=None, ge=1, le=1 << 50,
                                  description="Bytes of the artifact's weights (the job's bytes_after metric).")
    max_ppl_increase_pct: float | None = Field(default=None, ge=0, le=1e6,
                                               description="Quality floor: max perplexity increase, %.")
    max_kl: float | None = Field(default=None, ge=0, le=100,
                                 description="Quality floor: max mean KL(original || compressed), nats/token.")
    min_top1_agreement: float | None = Field(
        default=None, ge=0, le=1, description="Quality floor: min top-1 token agreement on the evaluation windows.")
    max_flip_rate: float | None = Field(
        default=None, ge=0, le=1,
        description="Quality floor: max answer-flip rate on the multiple-choice evaluation.tasks.")
    space: SearchSpace = Field(default_factory=SearchSpace)
    candidates: int = Field(default=2, ge=1, le=MAX_CANDIDATES,
                            description="Best allocations fully compressed and evaluated at the end.")
    generations: int = Field(
        default=10, ge=0, le=MAX_GENERATIONS,
        description="Evolutionary generations after the knapsack (0: the knapsack alone, the cheapest search; on "
        "SmolLM2 more generations lowered the fitness KL by ~2% and not the perplexity, BENCHMARKS.md §6).")
    offspring: int = Field(default=8, ge=1, le=MAX_OFFSPRING, description="Mutants per generation.")
    fitness_samples: int = Field(
        default=4, ge=1, le=MAX_FITNESS_SAMPLES,
        description="Calibration windows on which sensitivities and the KL fitness are measured.")
    sensitivity_rounding: Literal["recipe", "fast"] = Field(
        default="recipe",
        description="How the sensitivity pass rounds each GPTQ level: with the step's own options ('recipe': "
        "MSE ranges and dynamic groups by default, each level as the artifact would get it), or with min-max "
        "ranges and static groups ('fast': several times cheaper on a GPU; the candidates are still compressed "
        "with the step's options). BENCHMARKS.md §6 compares them.")
    sensitivity_scale: Literal["layer", "block"] = Field(
        default="layer",
        description="How block-output sensitivities are put on the scale of the end-to-end KL: one fitness "
        "evaluation per searched linear ('layer'), or one per block shared by its linears ('block': ~7x fewer "
        "evaluations on a Llama-style block, the cheaper search; BENCHMARKS.md §6 compares them).")

    @model_validator(mode="after")
    def _something_to_meet(self) -> TargetSpec:
        if self.bits_per_weight is None and self.max_bytes is None and not self.has_floor:
            raise ValueError("a target needs a budget (bits_per_weight or max_bytes) and/or a quality floor "
                             "(max_ppl_increase_pct, max_kl, min_top1_agreement or max_flip_rate)")
        if self.bits_per_weight is not None and self.max_bytes is not None:
            raise ValueError("give one budget: bits_per_weight or max_bytes")
        return self

    @property
    def has_floor(self) -> bool:
        return any(getattr(self, k) is not None for k in FLOORS)

    @property
    def has_budget(self) -> bool:
        return self.bits_per_weight is not None or self.max_bytes is not None
