"""compress(model, recipe, ctx) -> report: run the recipe's steps in order, each on the previous output."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from presso.compression.core import staging
from presso.compression.core.context import StepContext
from presso.compression.core.layout import find_layout, get_weight, is_linear
from presso.compression.errors import CalibrationRequired
from presso.compression.recipe import Recipe
from presso.compression.registry import engine_for

log = logging.getLogger(__name__)

AfterStep = Callable[[int, nn.Module], dict[str, Any]]


def snapshot_linears(model: nn.Module) -> dict[str, torch.Tensor]:
    """[out, in] copies (CPU) of every linear weight in the block list."""
    layout = find_layout(model)
    return {
        f"{layout.prefix}.{n}": get_weight(m).detach().to("cpu", copy=True)
        for n, m in layout.blocks.named_modules()
        if is_linear(m)
    }


def check_calibration(recipe: Recipe, ctx: StepContext) -> None:
    if recipe.needs_calibration and ctx.calibration is None:
        needing = [s.method for s in recipe.steps if type(s).needs_calibration]
        raise CalibrationRequired(f"steps {needing} need calibration data")


def compress(model: nn.Module, recipe: Recipe, ctx: StepContext, after_step: AfterStep | None = None) -> dict[str, Any]:
    """Apply ``recipe`` to ``model`` in place. Returns {"steps": [...], "seconds": total}."""
    check_calibration(recipe, ctx)
    engines = [engine_for(step) for step in recipe.steps]  # fail on a missing engine before any work
    if any(s.method == "eora" for s in recipe.steps) and not ctx.originals:
        ctx.originals = snapshot_linears(model)
    torch.manual_seed(ctx.seed)
    steps: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for i, (step, engine) in enumerate(zip(recipe.steps, engines, strict=True)):
        ctx.stage = f"compress:{i + 1}/{len(recipe.steps)}:{step.method}"
        ctx.report(0.0)
        t0 = time.perf_counter()
        result = engine.apply_(model, step, ctx) or {}
        seconds = time.perf_counter() - t0
        entry: dict[str, Any] = {"method": step.method, "seconds": seconds, **result}
        if after_step is not None:
            entry["eval"] = after_step(i, model)
        log.info("step %d %s done in %.1fs", i + 1, step.method, seconds)
        steps.append(entry)
    model.to("cpu")
    staging.release()  # pinned staging memory is not kept between jobs
    return {"steps": steps, "seconds": time.perf_counter() - t_all}
