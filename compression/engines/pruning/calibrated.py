"""The loop the calibrated pruning engines (Wanda, SparseGPT) share: plan, then prune block by block."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from presso.compression.configs.pruning import SparsityStep
from presso.compression.core.context import StepContext
from presso.compression.core.layout import Layout
from presso.compression.core.sequential import BlockInputs, run_blockwise
from presso.compression.core.targets import targeted_linears
from presso.compression.engines.pruning.common import Chosen, observe, preflight
from presso.compression.engines.pruning.owl import block_sparsities


@dataclass
class PruningPlan:
    """What a calibrated pruning engine decides before touching a weight."""

    layout: Layout
    chosen: Chosen
    sparsities: list[float]  # per block (uniform, or OWL's allocation)


def plan(model: nn.Module, cfg: SparsityStep, ctx: StepContext) -> PruningPlan:
    layout, chosen = targeted_linears(model, cfg)
    preflight(chosen, cfg)
    return PruningPlan(layout, chosen, block_sparsities(model, layout, chosen, cfg, ctx))


PruneLayer = Callable[[str, nn.Module, Any, float], dict[str, Any]]


def prune_blockwise(model: nn.Module, p: PruningPlan, ctx: StepContext, make_stats: Callable[[], Any],
                    prune_layer: PruneLayer) -> list[dict[str, Any]]:
    """Layer-sequential loop: per block, one forward fills fresh statistics (``make_stats()``), then
    ``prune_layer(name, module, stats, block_sparsity)`` prunes each targeted linear and returns its record."""
    layers: list[dict[str, Any]] = []

    def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
        lins = p.chosen[i]
        if not lins:
            return
        stats = make_stats()
        observe(block, inputs, lins, stats)
        layers.extend(prune_layer(name, mod, stats, p.sparsities[i]) for name, mod in lins.items())

    run_blockwise(model, p.layout, ctx, process)
    return layers
