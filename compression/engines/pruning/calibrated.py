"""The loop the calibrated pruning engines (Wanda, SparseGPT) share: plan, then prune block by block."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from presso.compression.configs.pruning import SparsityStep
from presso.compression.core.context import StepContext
from presso.compression.core.experts import starved_experts
from presso.compression.core.layout import Layout, get_weight
from presso.compression.core.sequential import BlockInputs, run_blockwise
from presso.compression.core.targets import targeted_linears
from presso.compression.engines.pruning.common import Chosen, apply_mask_, choose_mask, layer_record, observe, preflight
from presso.compression.engines.pruning.owl import block_sparsities

log = logging.getLogger(__name__)


@dataclass
class PruningPlan:
    """What a calibrated pruning engine decides before touching a weight."""

    layout: Layout
    chosen: Chosen
    sparsities: list[float]  # per block (uniform, or OWL's allocation)
    cfg: SparsityStep


def plan(model: nn.Module, cfg: SparsityStep, ctx: StepContext) -> PruningPlan:
    layout, chosen = targeted_linears(model, cfg)
    preflight(chosen, cfg)
    return PruningPlan(layout, chosen, block_sparsities(model, layout, chosen, cfg, ctx), cfg)


PruneLayer = Callable[[str, nn.Module, Any, float], dict[str, Any]]
Fallback = Callable[[str, nn.Module, float, str], dict[str, Any]]


def magnitude_fallback(cfg: SparsityStep) -> Fallback:
    """Data-free pruning of a linear without enough calibration input (an expert few tokens reached):
    magnitude scores, the same sparsity and pattern (per row, or N:M)."""

    def prune(name: str, mod: nn.Module, sparsity: float, why: str) -> dict[str, Any]:
        apply_mask_(mod, choose_mask(get_weight(mod).abs(), cfg, sparsity, per_row=True))
        rec = layer_record(name, mod, sparsity if cfg.nm is None else cfg.effective_sparsity, cfg)
        rec["fallback"] = f"magnitude: {why}"
        log.warning("%s: %s; pruned by magnitude", name, why)
        return rec

    return prune


def prune_blockwise(model: nn.Module, p: PruningPlan, ctx: StepContext, make_stats: Callable[[], Any],
                    prune_layer: PruneLayer, fallback: Fallback | None = None) -> list[dict[str, Any]]:
    """Layer-sequential loop: per block, one forward fills fresh statistics (``make_stats()``), then
    ``prune_layer(name, module, stats, block_sparsity)`` prunes each targeted linear and returns its record.
    Experts that received fewer than ``expert_min_tokens`` routed tokens go to ``fallback`` (default:
    :func:`magnitude_fallback`)."""
    layers: list[dict[str, Any]] = []
    cfg: SparsityStep = p.cfg
    fallback = fallback or magnitude_fallback(cfg)

    def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
        lins = p.chosen[i]
        if not lins:
            return
        stats = make_stats()
        observe(block, inputs, lins, stats)
        starved = starved_experts(model, lins, cfg.expert_min_tokens)
        layers.extend(fallback(name, mod, p.sparsities[i], starved[name]) if name in starved
                      else prune_layer(name, mod, stats, p.sparsities[i]) for name, mod in lins.items())

    run_blockwise(model, p.layout, ctx, process)
    return layers
