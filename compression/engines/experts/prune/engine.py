"""expert_prune: remove the same number of routed experts from every MoE layer (REAP-style).

Block by block (each block sees the outputs of the already pruned ones), a hook on every experts module
measures each expert on the calibration tokens the router sends it: the token count and, for REAP, the mean
over those tokens of gate weight x ||expert output|| (Lasby et al., 2025, "REAP the Experts"). The lowest
scoring experts of each layer go with their router rows; the softmax over the remaining rows renormalizes
the routing. The config's expert count (num_experts / num_local_experts / n_routed_experts) follows, so the
artifact is a standard, smaller checkpoint of the same architecture.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from presso.compression.configs.experts import ExpertPruneConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import find_layout
from presso.compression.core.sequential import BlockInputs, forward_block, run_blockwise
from presso.compression.engines.experts.common import (
    ExpertStats,
    keep_experts_,
    plan_removal,
    update_config_,
)
from presso.compression.registry import register

log = logging.getLogger(__name__)


def choose_keep(scores: torch.Tensor, n_remove: int) -> list[int]:
    """Indices of the experts kept (ascending): all but the ``n_remove`` lowest scores (ties: higher index goes)."""
    order = sorted(range(len(scores)), key=lambda e: (float(scores[e]), -e))
    return sorted(order[n_remove:])


@register(ExpertPruneConfig)
class ExpertPruneEngine:
    def preflight(self, model: nn.Module, cfg: ExpertPruneConfig) -> None:
        plan_removal(model, cfg)

    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: ExpertPruneConfig, ctx: StepContext) -> dict[str, Any]:
        plan = plan_removal(model, cfg, streamed=ctx.stream is not None)
        layers, before, n_remove, params_before = plan.layers, plan.before, plan.n_remove, plan.params_before
        layout = find_layout(model)
        by_name = {m.name: m for m in layers}
        records: list[dict[str, Any]] = []

        def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
            prefix = layout.block_name(i) + "."
            here = [m for name, m in by_name.items() if name.startswith(prefix)]
            if not here:
                return
            stats = [ExpertStats.watch(m.experts) for m in here]
            try:
                forward_block(block, inputs)
            finally:
                for s in stats:
                    s.remove()
            for m, s in zip(here, stats, strict=True):
                scores = s.scores(cfg.criterion)
                keep = choose_keep(scores, n_remove)
                keep_experts_(model, m, keep)
                removed = [e for e in range(before) if e not in keep]
                records.append({"name": m.name, "router": m.router_name, "removed": removed,
                                "tokens": [int(t) for t in s.tokens],
                                "scores": [round(float(x), 6) for x in scores]})
                log.info("%s: experts %s removed (%s)", m.name, removed, cfg.criterion)

        run_blockwise(model, layout, ctx, process)
        fields = update_config_(model, before, before - n_remove)
        params_after = sum(p.numel() for p in model.parameters())
        return {
            "experts_before": before, "experts_after": before - n_remove, "criterion": cfg.criterion,
            "config_fields": fields, "params_before": params_before, "params_after": params_after,
            "fraction_removed": round(1 - params_after / params_before, 6), "moe_layers": records,
        }
