"""compress(model, recipe, ctx) -> report: run the recipe's steps in order, each on the previous output."""

from __future__ import annotations

import dataclasses
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
        needing = [s.method for s in recipe.steps if s.uses_calibration()]
        if recipe.kv_cache is not None:
            needing.append("kv_cache")
        raise CalibrationRequired(f"steps {needing} need calibration data")


# Steps after which layer shapes or names differ from the loaded model's: later steps are checked when they run.
_RESHAPING = frozenset({"svd", "svd_llm", "prune_structured", "eora", "expert_prune", "expert_merge"})


def _check_step(model: nn.Module, step: Any) -> None:
    """The checks an engine makes on the model before its work, without the work (see ``preflight``)."""
    from presso.compression.configs.lowrank import EoRAConfig, SVDConfig
    from presso.compression.configs.pruning import PruneStructuredConfig, SparseGPTConfig, SparsityStep
    from presso.compression.configs.quantization import GPTQConfig, QuantStep
    from presso.compression.core.layout import select_linears

    if step.method == "lossless":
        return
    if isinstance(step, PruneStructuredConfig):
        from presso.compression.engines.pruning.structured.engine import plan

        plan(model, step)
        return
    layout = find_layout(model)
    chosen = select_linears(model, layout, step.targets, step.ignore)  # no_target_modules
    if isinstance(step, QuantStep):
        from presso.compression.engines.quantization.common import schemes_for

        schemes = schemes_for(chosen, step)  # an explicit group wider than a layer
        if isinstance(step, GPTQConfig):
            from presso.compression.engines.quantization.gptq.engine import check_act_order

            check_act_order(step, schemes)
    elif isinstance(step, SparsityStep):
        from presso.compression.engines.pruning.common import preflight as check_sparsity

        check_sparsity(chosen, step)  # N:M against the input widths
        if isinstance(step, SparseGPTConfig):
            from presso.compression.engines.pruning.sparsegpt.engine import joint_args

            for lins in chosen.values():
                for name, mod in lins.items():
                    joint_args(step, mod, name)
    elif isinstance(step, SVDConfig) and step.ratio is not None:
        from presso.compression.engines.lowrank.svd.engine import layer_shapes
        from presso.compression.engines.lowrank.svd.svd_math import uniform_ranks

        uniform_ranks(layer_shapes(chosen), step.ratio)  # a ratio that leaves some layer rank 0
    elif isinstance(step, EoRAConfig):
        from presso.compression.engines.lowrank.common import check_rank

        for lins in chosen.values():
            for name, mod in lins.items():
                check_rank(name, mod, step.rank)


def preflight(model: nn.Module, recipe: Recipe) -> None:
    """Model-dependent checks of a recipe, before any data or compute: a group size wider than a layer, an N:M
    pattern that does not divide a width, drop_blocks >= the block count, a rank above a layer's, targets that
    match nothing. Raises what the engine would (``invalid_recipe``, ``no_target_modules``) when it starts,
    which for a later step or a fallback recipe could be an hour later. Steps after one that reshapes layers
    (svd, svd_llm, prune_structured, eora, expert_prune, expert_merge) are checked only when they run.
    """
    for step in recipe.steps:
        engine = engine_for(step)  # a missing engine, too
        _check_step(model, step)
        if hasattr(engine, "preflight"):  # the engine's own model-dependent checks
            engine.preflight(model, step)
        if step.method in _RESHAPING:
            break
    if recipe.kv_cache is not None:
        from presso.compression.engines.kvcache.calibrate import preflight as kv_preflight

        kv_preflight(model)


def for_engine(ctx: StepContext, engine: Any) -> StepContext:
    """The context an engine runs with: several ranks (``ctx.dist``) only for an engine that splits its work
    across them (``distributed = True``); any other runs whole on every rank, which gives every rank the
    same model (its inputs are the same everywhere) with no communication."""
    if ctx.dist is None or getattr(engine, "distributed", False):
        return ctx
    return dataclasses.replace(ctx, dist=None)


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
        result = engine.apply_(model, step, for_engine(ctx, engine)) or {}
        seconds = time.perf_counter() - t0
        entry: dict[str, Any] = {"method": step.method, "seconds": seconds, **result}
        if after_step is not None:
            entry["eval"] = after_step(i, model)
        log.info("step %d %s done in %.1fs", i + 1, step.method, seconds)
        steps.append(entry)
    if recipe.kv_cache is not None:  # after every step: the scales see the compressed model's keys and values
        from presso.compression.engines.kvcache.calibrate import calibrate_

        ctx.stage = "compress:kv_cache"
        t0 = time.perf_counter()
        kv = calibrate_(model, recipe.kv_cache, for_engine(ctx, None))
        steps.append({"method": "kv_cache", "seconds": time.perf_counter() - t0, **kv})
    if ctx.stream is None:  # a streamed model's blocks are written and released already (on the meta device)
        model.to("cpu")
    staging.release()  # pinned staging memory is not kept between jobs
    return {"steps": steps, "seconds": time.perf_counter() - t_all}
