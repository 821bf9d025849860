"""smoothquant engine: per block, per input group, migrate activation outliers into the weights.

Per block (layer-sequential, compression.core.sequential; the block's function is unchanged, so its outputs
are the next block's inputs as before):

1. one forward over the calibration batches groups the block's linears by the tensor they read (as gptq's
   observe does) and records each group's per-channel absmax (and, with ``search``, a random subset of
   ``search_tokens`` tokens);
2. each group's producer is found and verified exact by AWQ's fold planner (awq/fold.py: a norm whose output
   is the group's input, or a linear of matching width; planned on the first block, reused by name);
   ``producers: "norm"`` keeps norms only;
3. groups with at least one targeted linear and a producer get ``s`` (smooth_math) for their alpha (an
   override, the search's choice, or ``alpha``), folded: producer / s, every linear reading the input * s.

Linears whose input has no foldable producer are left as they are; the record says why. The weights kept for
a later ``eora`` (``ctx.originals``) are transformed the same way, so its residual compares like with like.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from presso.compression.configs.transforms import SmoothQuantConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import block_linears, get_weight
from presso.compression.core.sequential import BlockInputs, observe_inputs, run_blockwise
from presso.compression.core.targets import targeted_linears
from presso.compression.engines.quantization.awq.engine import Plan, _rel, plan_block
from presso.compression.engines.quantization.awq.fold import fold_
from presso.compression.engines.quantization.gptq.observe import InputGroups
from presso.compression.engines.quantization.smoothquant.smooth_math import (
    search_alpha,
    smoothing_scales,
    weight_maxima,
)
from presso.compression.registry import register

log = logging.getLogger(__name__)


class SmoothStats(InputGroups):
    """InputGroups' grouping by input tensor, with per-channel absmax and (optionally) a token sample per group."""

    def __init__(self, device: torch.device, quota: int, seed: int) -> None:
        super().__init__(device)
        self.absmax: dict[str, torch.Tensor] = {}
        self.samples: dict[str, list[torch.Tensor]] = {}
        self.quota = quota
        self.gen = torch.Generator().manual_seed(seed)

    def on_input(self, name: str, x: torch.Tensor) -> None:
        if not self.leads(name, x):
            return
        x = x.reshape(-1, x.shape[-1]).to(self.device)
        a = x.abs().amax(dim=0).float()
        self.absmax[name] = a if name not in self.absmax else torch.maximum(self.absmax[name], a)
        if self.quota > 0:
            rows = x if x.shape[0] <= self.quota else x[torch.randperm(x.shape[0], generator=self.gen)[: self.quota]
                                                        .to(x.device)]
            self.samples.setdefault(name, []).append(rows.float())

    def tokens(self, name: str) -> torch.Tensor:
        return torch.cat(self.samples[self.leader_of[name]])


def observe(block: nn.Module, inputs: BlockInputs, modules: dict[str, nn.Module], device: torch.device, quota: int,
            seed: int) -> SmoothStats:
    stats = SmoothStats(device, quota, seed)
    with observe_inputs(modules, stats.on_input):
        for h, kw in zip(inputs.hidden, inputs.kwargs, strict=True):
            block(h, **kw)
            stats.end_batch()
    return stats


def _ratio(x_max: torch.Tensor) -> float:
    """How outlying the largest channel is: max / median of the per-channel absmax."""
    return float(x_max.max() / x_max.median().clamp_min(1e-12))


def _fix_originals(ctx: StepContext, producer: str, kind: str, members: list[str], s: torch.Tensor) -> None:
    s = s.detach().cpu().float()
    for n in members:
        if n in ctx.originals:
            ctx.originals[n] = ctx.originals[n] * s.unsqueeze(0)
    if kind == "linear" and producer in ctx.originals:
        ctx.originals[producer] = ctx.originals[producer] / s.unsqueeze(1)


@register(SmoothQuantConfig)
class SmoothQuantEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: SmoothQuantConfig, ctx: StepContext) -> dict[str, Any]:
        layout, chosen = targeted_linears(model, cfg)
        plan: Plan = {}
        n_seq = 0 if ctx.calibration is None else int(ctx.calibration.shape[0])
        n_batches = max(1, math.ceil(n_seq / ctx.batch_size))
        quota = math.ceil(cfg.search_tokens / n_batches) if cfg.search else 0

        def process(i: int, block: nn.Module, inputs: BlockInputs) -> dict[str, Any]:
            prefix = layout.block_name(i)
            if not chosen[i]:
                return {"groups": []}
            stats = observe(block, inputs, block_linears(block, prefix), ctx.device, quota, ctx.seed + i)
            plan_block(block, prefix, stats, inputs, plan)
            records = []
            for leader, members in stats.groups().items():
                if not any(n in chosen[i] for n in members):
                    continue
                records.append(self._group(block, prefix, leader, members, stats, plan, cfg, ctx))
            return {"groups": records}

        blocks = run_blockwise(model, layout, ctx, process)
        groups = [g for b in blocks for g in b.get("groups", [])]
        smoothed = sum(1 for g in groups if g.get("alpha") is not None)
        log.info("smoothquant: %d of %d input groups smoothed", smoothed, len(groups))
        return {"groups": groups, "smoothed": smoothed}

    def _group(self, block: nn.Module, prefix: str, leader: str, members: list[str], stats: SmoothStats, plan: Plan,
               cfg: SmoothQuantConfig, ctx: StepContext) -> dict[str, Any]:
        x_max = stats.absmax[leader]
        rec: dict[str, Any] = {"linears": members, "act_outlier_ratio": _ratio(x_max), "alpha": None}
        producer = plan[_rel(members, prefix)]
        if producer is None:
            return {**rec, "producer": None, "reason": "no foldable producer"}
        if cfg.producers == "norm" and producer.kind != "norm":
            return {**rec, "producer": f"{prefix}.{producer.name}", "reason": "producer is a linear (producers: norm)"}
        consumers = [block.get_submodule(r) for r in _rel(members, prefix)]
        weights = [get_weight(c, ctx.device) for c in consumers]
        alpha = cfg.alpha_for(members)
        rec["producer"] = f"{prefix}.{producer.name}"
        if alpha is None and cfg.search:
            alpha, errors = search_alpha(stats.tokens(leader), weights, x_max, cfg.grid, cfg.search_format)
            best = errors["none"] if alpha is None else errors[f"{alpha:g}"]
            rec["search"] = {"format": cfg.search_format, "error_vs_unsmoothed": best / max(errors["none"], 1e-30),
                             "error_at_default_vs_unsmoothed": errors[f"{cfg.alpha:g}"] / max(errors["none"], 1e-30)
                             if f"{cfg.alpha:g}" in errors else None}
            if alpha is None:
                return {**rec, "reason": "no alpha beat the unsmoothed group on the search loss"}
        elif alpha is None:
            alpha = cfg.alpha
        s = smoothing_scales(x_max, weight_maxima(weights), alpha)
        fold_(block.get_submodule(producer.name), producer.kind, consumers, s)
        _fix_originals(ctx, f"{prefix}.{producer.name}", producer.kind, members, s)
        rec.update(alpha=alpha, act_outlier_ratio_after=_ratio(x_max / s), scale_min=float(s.min()),
                   scale_max=float(s.max()))
        return rec
