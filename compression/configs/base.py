"""Base class of every recipe step and the module-pattern rules they share."""

from __future__ import annotations

import fnmatch
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CONFIGS: dict[str, type[StepConfig]] = {}


class StepConfig(BaseModel):
    """One step of a recipe. Subclasses set ``method: Literal[...]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    targets: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Patterns of the Linear modules (inside the repeated block list) this step touches. "
        "A plain pattern is a glob matched against the full module name or its last component "
        "('down_proj', 'model.layers.0.*'); 're:' starts a regular expression.",
    )
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="Patterns of modules left untouched (same syntax as targets).",
    )
    expert_min_tokens: int = Field(
        default=16, ge=0, le=1_000_000,
        description="Mixture-of-experts: a calibrated step compresses an expert that received fewer routed "
        "calibration tokens than this with the data-free rounding of the same scheme (RTN; magnitude for "
        "pruning), and its report says which experts and why. Data-free steps ignore it.",
    )
    expert_calibration: Literal["routed", "all"] = Field(
        default="routed",
        description="Mixture-of-experts: 'routed' gives each expert the statistics of the calibration tokens the "
        "router sends it; 'all' sends every token through every expert for statistics (the block's output still "
        "sums only the routed experts), so no expert lacks calibration, at E/k times the experts' compute.",
    )
    expert_chunk: int | None = Field(
        default=None, ge=1, le=1_000_000,
        description="Mixture-of-experts, gptq / sparsegpt / wanda: how many experts of a block have their "
        "calibration statistics (Hessians) held at once. A block with more experts is observed in "
        "ceil(experts / expert_chunk) forward passes, each chunk solved before the next pass; the result is "
        "bit-identical to one pass. Unset: automatic, on a GPU as many experts as fit in half the free device "
        "memory, on a CPU all of them (one pass). Other steps ignore it.",
    )

    # Class-level facts the pipeline and the API read.
    needs_calibration: ClassVar[bool] = False
    lossy: ClassVar[bool] = True
    summary: ClassVar[str] = ""

    def uses_calibration(self) -> bool:
        """Whether this step, as configured, runs on calibration data (``needs_calibration`` says it may)."""
        return type(self).needs_calibration

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("method")
        default = field.default if field is not None else None
        if isinstance(default, str) and default:
            CONFIGS[default] = cls

    @field_validator("targets", "ignore")
    @classmethod
    def _valid_patterns(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as exc:
                    raise ValueError(f"bad regular expression {p!r}: {exc}") from exc
            elif not p:
                raise ValueError("empty pattern")
        return patterns


def matches(name: str, pattern: str) -> bool:
    """True when module ``name`` matches ``pattern`` (see ``StepConfig.targets``)."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    leaf = name.rsplit(".", 1)[-1]
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(leaf, pattern)


def selected(name: str, targets: list[str], ignore: list[str]) -> bool:
    return any(matches(name, p) for p in targets) and not any(matches(name, p) for p in ignore)
