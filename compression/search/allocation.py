"""Levels and allocations, and the normal recipe an allocation is written as. Torch-free.

An allocation gives every searched Linear one level (method, bits, group size). It is written as one recipe
step per method used: the step's own bits / group size are those of most of its layers, every other layer
gets an ``overrides`` entry naming it exactly. So the result is reproducible (run it as a recipe) and editable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from presso.compression.recipe import Recipe


@dataclass(frozen=True, order=True)
class Level:
    method: str
    bits: int
    group_size: int  # as written in the recipe: -1 = per channel

    @property
    def label(self) -> str:
        g = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"{self.method} W{self.bits} {g}"

    def for_layer(self, in_features: int) -> Level:
        """The level as written for a layer of this input width: a group wider than it means per channel (an
        explicit wider group is an error in a recipe)."""
        if self.group_size > in_features:
            return Level(self.method, self.bits, -1)
        return self


def space_levels(methods: Sequence[str], bits: Sequence[int], group_sizes: Sequence[int],
                 seed: Level | None = None) -> list[Level]:
    levels = sorted({Level(m, b, g) for m in methods for b in bits for g in group_sizes})
    if seed is not None and seed not in levels:
        levels.append(seed)
    return levels


def _exact(name: str) -> str:
    """A pattern matching exactly one module name (module names hold letters, digits, '_' and '.')."""
    if any(ch in name for ch in "*?[]"):
        import re

        return "re:^" + re.escape(name) + "$"
    return name


def allocation_recipe(assigned: Mapping[str, Level], base: Mapping[str, Mapping[str, Any]],
                      targets: Sequence[str], ignore: Sequence[str]) -> Recipe:
    """The recipe for ``assigned`` (module name -> level, in model order). ``base[method]`` holds the step
    options besides bits / group size (damp_percent, symmetric, observer, ...); ``targets`` / ``ignore`` are the
    search's (used as is when one method covers every layer)."""
    by_method: dict[str, list[str]] = {}
    for name, level in assigned.items():
        by_method.setdefault(level.method, []).append(name)
    steps = []
    for method, names in by_method.items():
        common = Counter((assigned[n].bits, assigned[n].group_size) for n in names).most_common(1)[0][0]
        overrides = []
        for n in names:
            lv = assigned[n]
            if (lv.bits, lv.group_size) != common:
                ov: dict[str, Any] = {"pattern": _exact(n)}
                if lv.bits != common[0]:
                    ov["bits"] = lv.bits
                if lv.group_size != common[1]:
                    ov["group_size"] = lv.group_size
                overrides.append(ov)
        step: dict[str, Any] = {**base.get(method, {}), "method": method, "bits": common[0],
                                "group_size": common[1], "ignore": list(ignore)}
        step["targets"] = list(targets) if len(by_method) == 1 else [_exact(n) for n in names]
        if overrides:
            step["overrides"] = overrides
        steps.append(step)
    return Recipe.model_validate({"steps": steps})


def recipe_levels(recipe: Recipe, names: Sequence[str]) -> dict[str, Level]:
    """The level each of ``names`` gets from a recipe of rtn / gptq steps (the inverse of
    ``allocation_recipe``, used by tests and to read a seed); names no step targets are left out."""
    from presso.compression.configs.base import selected

    out: dict[str, Level] = {}
    for step in recipe.steps:
        for n in names:
            if n in out or not selected(n, step.targets, step.ignore):
                continue
            scheme = step.scheme_for(n)  # type: ignore[attr-defined]
            if scheme is not None:
                out[n] = Level(step.method, scheme.bits, scheme.group_size)
    return out
