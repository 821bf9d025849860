"""Wanda: prune by |W| * ||X||_2 per input channel, compared within each output row (or N:M).

Layer-sequential: block i is scored on the activations produced by the already-pruned blocks
0..i-1. With ``allocation='owl'`` the per-block sparsity comes from OWL's outlier ratios.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from presso.compression.configs.pruning import WandaConfig
from presso.compression.core.context import StepContext
from presso.compression.engines.pruning.calibrated import plan, prune_blockwise
from presso.compression.engines.pruning.common import (
    SquaredNorms,
    apply_mask_,
    choose_mask,
    layer_record,
    summarize,
    wanda_scores,
)
from presso.compression.registry import register


@register(WandaConfig)
class WandaEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: WandaConfig, ctx: StepContext) -> dict[str, Any]:
        p = plan(model, cfg, ctx)

        def prune_layer(name: str, mod: nn.Module, norms: SquaredNorms, sparsity: float) -> dict[str, Any]:
            apply_mask_(mod, choose_mask(wanda_scores(mod, norms.norm(name)), cfg, sparsity, per_row=True))
            return layer_record(name, mod, sparsity if cfg.nm is None else cfg.effective_sparsity, cfg)

        layers = prune_blockwise(model, p, ctx, SquaredNorms, prune_layer)
        return {"layers": layers, "allocation": cfg.allocation, "block_sparsity": p.sparsities, **summarize(layers),
                **p.expert_observation()}
