"""Wanda: prune by |W| * ||X||_2 per input channel, compared within each output row (or N:M).

Layer-sequential: block i is scored on the activations produced by the already-pruned blocks
0..i-1. With ``allocation='owl'`` the per-block sparsity comes from OWL's outlier ratios.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compression.configs.pruning import WandaConfig
from compression.core.context import StepContext
from compression.core.layout import find_layout, select_linears
from compression.core.sequential import BlockInputs, run_blockwise
from compression.engines.pruning.common import (
    SquaredNorms,
    apply_mask_,
    choose_mask,
    layer_record,
    observe,
    preflight,
    summarize,
    wanda_scores,
)
from compression.engines.pruning.owl import block_sparsities
from compression.registry import register


@register(WandaConfig)
class WandaEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: WandaConfig, ctx: StepContext) -> dict[str, Any]:
        layout = find_layout(model)
        chosen = select_linears(model, layout, cfg.targets, cfg.ignore)
        preflight(chosen, cfg)
        sparsities = block_sparsities(model, layout, chosen, cfg, ctx)
        layers: list[dict[str, Any]] = []

        def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
            lins = chosen[i]
            if not lins:
                return
            acc = SquaredNorms()
            observe(block, inputs, lins, acc)
            for name, mod in lins.items():
                keep = choose_mask(wanda_scores(mod, acc.norm(name)), cfg, sparsities[i], per_row=True)
                apply_mask_(mod, keep)
                layers.append(layer_record(name, mod, sparsities[i] if cfg.nm is None else cfg.effective_sparsity,
                                           cfg))

        run_blockwise(model, layout, ctx, process)
        return {"layers": layers, "allocation": cfg.allocation, "block_sparsity": sparsities, **summarize(layers)}
