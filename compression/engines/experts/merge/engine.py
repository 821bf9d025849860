"""expert_merge: merge the experts of every MoE layer into its most used ones (MC-SMoE-style).

Block by block on the routed calibration tokens (each block sees the outputs of the already merged ones), per MoE
layer: the ``E - n`` experts that receive the most tokens are the dominant ones; every other expert joins the
dominant expert whose router-logit column (over the calibration tokens) is the most cosine-similar (Li et al.,
2024, "Merge, Then Compress"). Each group becomes one expert: the token-frequency-weighted average of its members'
gate / up / down weights, in the dominant expert's place, with the dominant expert's router row; the other rows
go. The config's expert count follows, so the artifact is a standard, smaller checkpoint. Unlike MC-SMoE, the
members' hidden units are not permutation-aligned before averaging.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import torch
from torch import nn

from presso.compression.configs.experts import ExpertMergeConfig
from presso.compression.core.context import StepContext
from presso.compression.core.experts import ExpertMLP
from presso.compression.core.layout import find_layout
from presso.compression.core.sequential import BlockInputs, forward_block, run_blockwise
from presso.compression.engines.experts.common import (
    ExpertStats,
    MoELayer,
    keep_experts_,
    plan_removal,
    update_config_,
)
from presso.compression.registry import register

log = logging.getLogger(__name__)


def plan_groups(tokens: torch.Tensor, similarity: torch.Tensor, n_remove: int) -> dict[int, list[int]]:
    """Dominant expert -> its group (itself first, then the experts merged into it, ascending)."""
    n = len(tokens)
    by_use = sorted(range(n), key=lambda e: (-int(tokens[e]), e))
    dominant = sorted(by_use[: n - n_remove])
    groups = {d: [d] for d in dominant}
    for e in sorted(by_use[n - n_remove:]):
        target = max(dominant, key=lambda d: (float(similarity[e, d]), -d))
        groups[target].append(e)
    return groups


@torch.no_grad()
def merge_group_(layer: MoELayer, group: list[int], tokens: torch.Tensor) -> None:
    """Overwrite expert ``group[0]`` with the frequency-weighted average of the group's experts (uniform when
    none of them received a token)."""
    if len(group) == 1:
        return
    f = tokens[group].double()
    w = f / f.sum() if float(f.sum()) > 0 else torch.full_like(f, 1.0 / len(group))
    assert all(isinstance(layer.experts[e], ExpertMLP) for e in group)
    members = [cast(ExpertMLP, layer.experts[e]) for e in group]
    for k, target in enumerate(members[0].linears()):
        avg = sum(float(w[i]) * m.linears()[k].weight.double() for i, m in enumerate(members))
        assert isinstance(avg, torch.Tensor)
        target.weight.data.copy_(avg.to(target.weight.dtype))


@register(ExpertMergeConfig)
class ExpertMergeEngine:
    def preflight(self, model: nn.Module, cfg: ExpertMergeConfig) -> None:
        plan_removal(model, cfg)

    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: ExpertMergeConfig, ctx: StepContext) -> dict[str, Any]:
        plan = plan_removal(model, cfg, streamed=ctx.stream is not None)
        layers, before, n_remove, params_before = plan.layers, plan.before, plan.n_remove, plan.params_before
        layout = find_layout(model)
        records: list[dict[str, Any]] = []

        def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
            prefix = layout.block_name(i) + "."
            here = [m for m in layers if m.name.startswith(prefix)]
            if not here:
                return
            stats = [ExpertStats.watch(m.experts, cast(torch.Tensor, m.router.weight)) for m in here]
            try:
                forward_block(block, inputs)
            finally:
                for s in stats:
                    s.remove()
            for m, s in zip(here, stats, strict=True):
                groups = plan_groups(s.tokens, s.similarity(), n_remove)
                for group in groups.values():
                    merge_group_(m, group, s.tokens)
                keep_experts_(model, m, sorted(groups))
                merged = {str(d): g[1:] for d, g in groups.items() if len(g) > 1}
                records.append({"name": m.name, "router": m.router_name, "merged_into": merged,
                                "tokens": [int(t) for t in s.tokens]})
                log.info("%s: experts merged %s", m.name, merged)

        run_blockwise(model, layout, ctx, process)
        fields = update_config_(model, before, before - n_remove)
        params_after = sum(p.numel() for p in model.parameters())
        return {
            "experts_before": before, "experts_after": before - n_remove, "config_fields": fields,
            "params_before": params_before, "params_after": params_after,
            "fraction_removed": round(1 - params_after / params_before, 6), "moe_layers": records,
        }
