"""The Recipe: an ordered list of typed steps, discriminated by ``method``. Torch-free."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from presso.compression.configs import CONFIGS, StepConfig
from presso.compression.configs.kvcache import KVCacheConfig

MAX_STEPS = 16  # steps of one recipe
MAX_FALLBACKS = 4  # fallback recipes of one job
MAX_TOTAL_STEPS = 32  # steps of the recipe and all its fallbacks together

if TYPE_CHECKING:
    Step = StepConfig
else:  # the discriminated union of every registered step config
    Step = Annotated[Union[tuple(CONFIGS.values())], Field(discriminator="method")]  # noqa: UP007


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: list[Step] = Field(
        min_length=1, max_length=MAX_STEPS,
        description=f"Steps applied in order; each sees the previous output. At most {MAX_STEPS}.",
    )
    kv_cache: KVCacheConfig | None = Field(
        default=None,
        description="Quantize the attention KV cache: {\"format\": \"fp8\"} calibrates per-tensor key/value scales "
        "after the steps (written as compressed-tensors' kv_cache_scheme; the evaluation simulates it).",
    )

    @field_validator("steps", mode="before")
    @classmethod
    def _at_most(cls, steps: Any) -> Any:
        # before validation: 5,000 steps are refused without validating 5,000 step bodies first
        if isinstance(steps, list | tuple) and len(steps) > MAX_STEPS:
            raise ValueError(f"a recipe has at most {MAX_STEPS} steps, got {len(steps)}")
        return steps

    @model_validator(mode="after")
    def _order(self) -> Recipe:
        methods = [s.method for s in self.steps]
        if "lossless" in methods and methods.index("lossless") != len(methods) - 1:
            raise ValueError("'lossless' must be the last step (it encodes the finished artifact)")
        if methods.count("lossless") > 1:
            raise ValueError("'lossless' may appear once")
        for i, s in enumerate(self.steps):
            if getattr(type(s), "precedes_quantization", False) and any(type(p).lossy for p in self.steps[:i]):
                raise ValueError(f"steps[{i}]: '{s.method}' changes the weights it prepares for quantization; it "
                                 "must come before every lossy step")
            if s.method == "eora" and not any(type(p).lossy for p in self.steps[:i]):
                raise ValueError(
                    f"steps[{i}]: 'eora' compensates the error of an earlier lossy step; none precedes it"
                )
        return self

    @property
    def needs_calibration(self) -> bool:
        return self.kv_cache is not None or any(s.uses_calibration() for s in self.steps)


def check_fallback_count(fallbacks: Any) -> Any:
    """Before validation: at most MAX_FALLBACKS fallback recipes (raises ValueError)."""
    if isinstance(fallbacks, list | tuple) and len(fallbacks) > MAX_FALLBACKS:
        raise ValueError(f"at most {MAX_FALLBACKS} fallback recipes, got {len(fallbacks)}")
    return fallbacks


def check_total_steps(recipe: Recipe | None, fallbacks: list[Recipe]) -> list[Recipe]:
    """The recipe and its fallbacks together have at most MAX_TOTAL_STEPS steps (raises ValueError)."""
    total = (len(recipe.steps) if recipe is not None else 0) + sum(len(r.steps) for r in fallbacks)
    if total > MAX_TOTAL_STEPS:
        raise ValueError(
            f"the recipe and its fallbacks have {total} steps together; at most {MAX_TOTAL_STEPS}"
        )
    return fallbacks


def parse_recipe(data: Any) -> Recipe:
    """Validate JSON-like data into a Recipe (raises pydantic.ValidationError)."""
    return Recipe.model_validate(data)


def methods_catalog() -> list[dict[str, Any]]:
    """Every method with its JSON schema: what GET /v1/methods serves."""
    out = []
    for name, cls in sorted(CONFIGS.items()):
        out.append(
            {
                "method": name,
                "summary": cls.summary,
                "needs_calibration": cls.needs_calibration,
                "lossy": cls.lossy,
                "schema": TypeAdapter(cls).json_schema(),
            }
        )
    return out


def step_schema(method: str) -> type[StepConfig]:
    return CONFIGS[method]
