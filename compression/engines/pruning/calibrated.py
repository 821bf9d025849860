"""The loop the calibrated pruning engines (Wanda, SparseGPT) share: plan, then prune block by block."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from presso.compression.configs.pruning import SparsityStep
from presso.compression.core.context import StepContext
from presso.compression.core.expertchunks import counts_kept, passes_summary, plan_passes
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
    observation: list[tuple[int | None, int]] = field(default_factory=list)  # per MoE block: (expert chunk, passes)

    def expert_observation(self) -> dict[str, Any]:
        """The step report's chunked-observation facts (compression.core.expertchunks), or {} without experts."""
        if not self.observation:
            return {}
        return {"expert_observation": passes_summary([c for c, _ in self.observation],
                                                     [n for _, n in self.observation])}


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
                    prune_layer: PruneLayer, fallback: Fallback | None = None,
                    stats_bytes: Callable[[int], int] = lambda k: 4 * k) -> list[dict[str, Any]]:
    """Layer-sequential loop: per block, one forward fills fresh statistics (``make_stats()``), then
    ``prune_layer(name, module, stats, block_sparsity)`` prunes each targeted linear and returns its record.
    Experts that received fewer than ``expert_min_tokens`` routed tokens go to ``fallback`` (default:
    :func:`magnitude_fallback`).

    With ``expert_chunk`` (compression.core.expertchunks; ``stats_bytes(k)``: one linear's statistics for a
    ``k``-wide input, for the automatic chunk) a MoE block is observed in one forward per chunk of experts: each
    chunk's experts are pruned right after their pass (their outputs feed no input a later pass observes), the
    block's other linears, observed in the first pass, after the last one: the masks of one pass exactly."""
    layers: list[dict[str, Any]] = []
    cfg: SparsityStep = p.cfg
    fallback = fallback or magnitude_fallback(cfg)

    def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
        lins = p.chosen[i]
        if not lins:
            return
        obs = plan_passes(model, lins, cfg.expert_chunk, ctx.device, stats_bytes, shared_input=False)
        if obs.experts:
            p.observation.append((obs.chunk, len(obs.passes)))
        records: dict[str, dict[str, Any]] = {}
        starved: dict[str, str] = {}

        def prune(names: list[str], stats: Any) -> None:
            for name in names:
                mod = lins[name]
                if name in starved:
                    records[name] = fallback(name, mod, p.sparsities[i], starved[name])
                    if hasattr(stats, "drop"):
                        stats.drop(name)  # its statistics go with the pass, as a pruned linear's do
                else:
                    records[name] = prune_layer(name, mod, stats, p.sparsities[i])

        first: Any = None
        for k, collect in enumerate(obs.passes):
            stats = make_stats()
            with counts_kept(model, lins) if k else nullcontext():
                observe(block, inputs, {n: m for n, m in lins.items() if n in collect}, stats)
            if k == 0:
                starved, first = starved_experts(model, lins, cfg.expert_min_tokens), stats
            prune([n for n in lins if n in collect and (n in obs.expert_names or not obs.chunked)], stats)
            del stats
        if obs.chunked:
            prune([n for n in lins if n not in obs.expert_names], first)
        layers.extend(records[n] for n in lins)

    run_blockwise(model, p.layout, ctx, process)
    return layers
