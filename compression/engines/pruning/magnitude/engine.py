"""Magnitude pruning: drop the smallest |W|, per layer, globally, or N:M. No calibration."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from presso.compression.configs.pruning import MagnitudeConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import get_weight
from presso.compression.core.targets import targeted_linears
from presso.compression.engines.pruning.common import apply_mask_, choose_mask, layer_record, preflight, summarize
from presso.compression.engines.pruning.masks import global_threshold, threshold_mask
from presso.compression.registry import register


@register(MagnitudeConfig)
class MagnitudeEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: MagnitudeConfig, ctx: StepContext) -> dict[str, Any]:
        _, chosen = targeted_linears(model, cfg)
        preflight(chosen, cfg)
        threshold = None
        if cfg.scope == "global" and cfg.nm is None:
            threshold = global_threshold(
                [get_weight(m).abs() for lins in chosen.values() for m in lins.values()], cfg.sparsity, ctx.seed
            )
        layers = []
        for i, lins in chosen.items():
            for name, mod in lins.items():
                scores = get_weight(mod, ctx.device).abs()
                keep = threshold_mask(scores, threshold) if threshold is not None else choose_mask(
                    scores, cfg, cfg.sparsity, per_row=False
                )
                apply_mask_(mod, keep)
                layers.append(layer_record(name, mod, cfg.effective_sparsity, cfg))
            ctx.report((i + 1) / len(chosen))
        return {"layers": layers, "scope": "nm" if cfg.nm else cfg.scope, **summarize(layers)}
