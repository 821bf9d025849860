"""OWL: outlier-weighted layerwise sparsity (Yin et al., 2023).

A block whose Wanda scores |W|*||X|| hold more outliers (entries above ``m`` times the block's
mean score) keeps more of its weights. Per-block sparsity = target + lambda - 2*lambda*(normalized
outlier ratio), then shifted so that the parameter-weighted mean is exactly the target.

The ratios come from one dense pre-pass over the calibration data (run_blockwise without
changes), the same statistics OWL computes before pruning.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from presso.compression.configs.pruning import AllocationMixin, SparsityStep
from presso.compression.core.context import StepContext
from presso.compression.core.layout import Layout, get_weight
from presso.compression.core.sequential import BlockInputs, run_blockwise
from presso.compression.engines.pruning.common import Chosen, SquaredNorms, observe, wanda_scores

log = logging.getLogger(__name__)
MAX_SPARSITY = 0.99


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Fraction of all entries above ``m`` x their mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


def allocate(ratios: list[float], params: list[int], target: float, lam: float) -> list[float]:
    """Per-block sparsities in [target - lam, target + lam] (before the shift), weighted mean = target."""
    r = torch.tensor(ratios, dtype=torch.float64)
    n = torch.tensor(params, dtype=torch.float64)
    span = float(r.max() - r.min())
    norm = (r - r.min()) / span if span > 0 else torch.zeros_like(r)
    s = target + lam - 2 * lam * norm
    for _ in range(20):  # shift to the exact weighted mean; clamping may need a few rounds
        s = (s + (target - (s * n).sum() / n.sum())).clamp(0.0, MAX_SPARSITY)
        if abs(float((s * n).sum() / n.sum()) - target) < 1e-9:
            break
    return [float(x) for x in s]


def block_sparsities(model: nn.Module, layout: Layout, chosen: Chosen, cfg: SparsityStep,
                     ctx: StepContext) -> list[float]:
    """Target sparsity of each block: uniform, or OWL's outlier-weighted allocation."""
    n = len(layout.blocks)
    if not isinstance(cfg, AllocationMixin) or cfg.allocation != "owl":
        return [cfg.sparsity] * n
    ratios: list[float] = [0.0] * n

    def measure(i: int, block: nn.Module, inputs: BlockInputs) -> None:
        lins = chosen[i]
        if not lins:
            return
        acc = SquaredNorms()
        observe(block, inputs, lins, acc)
        ratios[i] = outlier_ratio([wanda_scores(m, acc.norm(name)) for name, m in lins.items()], cfg.owl_m)

    stage = ctx.stage
    ctx.stage = f"{stage}:owl"
    run_blockwise(model, layout, ctx, measure)
    ctx.stage = stage
    params = [sum(get_weight(m).numel() for m in chosen[i].values()) for i in range(n)]
    live = [i for i in range(n) if params[i]]
    alloc = allocate([ratios[i] for i in live], [params[i] for i in live], cfg.sparsity, cfg.owl_lambda)
    out = [cfg.sparsity] * n
    for i, s in zip(live, alloc, strict=True):
        out[i] = s
    log.info("OWL outlier ratios %s -> sparsities %s", [round(x, 4) for x in ratios], [round(x, 3) for x in out])
    return out
