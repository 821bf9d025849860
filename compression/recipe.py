"""The Recipe: an ordered list of typed steps, discriminated by ``method``. Torch-free."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from presso.compression.configs import CONFIGS, StepConfig

if TYPE_CHECKING:
    Step = StepConfig
else:  # the discriminated union of every registered step config
    Step = Annotated[Union[tuple(CONFIGS.values())], Field(discriminator="method")]  # noqa: UP007


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: list[Step] = Field(min_length=1, description="Steps applied in order; each sees the previous output.")

    @model_validator(mode="after")
    def _order(self) -> Recipe:
        methods = [s.method for s in self.steps]
        if "lossless" in methods and methods.index("lossless") != len(methods) - 1:
            raise ValueError("'lossless' must be the last step (it encodes the finished artifact)")
        if methods.count("lossless") > 1:
            raise ValueError("'lossless' may appear once")
        for i, s in enumerate(self.steps):
            if s.method == "eora" and not any(type(p).lossy for p in self.steps[:i]):
                raise ValueError(
                    f"steps[{i}]: 'eora' compensates the error of an earlier lossy step; none precedes it"
                )
        return self

    @property
    def needs_calibration(self) -> bool:
        return any(type(s).needs_calibration for s in self.steps)


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
