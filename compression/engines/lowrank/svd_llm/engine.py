"""svd_llm: truncation-aware whitened SVD, layer-sequential on calibration data.

Ranks: ``allocation='uniform'`` gives every layer the same parameter ratio. ``'global'`` first runs
a cheap pass over the unmodified model, on the first ``ALLOCATION_SAMPLES`` calibration sequences,
to get each layer's whitened spectrum (covariances are dropped after each block; only the singular
values are kept), allocates ranks from one budget
across all targeted layers of the model (svd_llm_math.allocate_ranks), then compresses
layer-sequentially, each block seeing the outputs of the already-compressed blocks before it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from presso.compression.configs.lowrank import SVDLLMConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import Layout, get_weight
from presso.compression.core.sequential import BlockInputs, run_blockwise
from presso.compression.core.targets import targeted_linears
from presso.compression.engines.lowrank.common import block_covariances
from presso.compression.engines.lowrank.svd.engine import factorize_, layer_shapes, summarize
from presso.compression.engines.lowrank.svd.svd_math import round_rank, uniform_ranks
from presso.compression.engines.lowrank.svd_llm.svd_llm_math import (
    LayerSpectrum,
    allocate_ranks,
    whitened_factors,
    whitened_svd,
    whitening,
)
from presso.compression.registry import register

log = logging.getLogger(__name__)
Chosen = dict[int, dict[str, nn.Module]]
ALLOCATION_SAMPLES = 16  # sequences for the allocation pass: spectra for ranking, not for the factors


def _scaled(ctx: StepContext, lo: float, hi: float, samples: int | None = None) -> StepContext:
    """The same context reporting progress into [lo, hi] of this step (on the first ``samples`` sequences)."""
    progress = ctx.progress
    calib = ctx.calibration[:samples] if samples is not None and ctx.calibration is not None else ctx.calibration
    return dataclasses.replace(ctx, calibration=calib, progress=lambda stage, f: progress(stage, lo + (hi - lo) * f))


@torch.no_grad()
def whitened_spectra(model: nn.Module, layout: Layout, chosen: Chosen, ctx: StepContext) -> dict[str, LayerSpectrum]:
    """Pass 1: whitened σ² of every chosen layer on the unmodified model."""
    spectra: dict[str, LayerSpectrum] = {}

    def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
        if not chosen[i]:
            return
        covs = block_covariances(block, chosen[i], inputs)
        for name, mod in chosen[i].items():
            w = get_weight(mod).double()
            s_factor, _ = whitening(covs.pop(name))
            sigma = torch.linalg.svdvals(w @ s_factor)
            spectra[name] = LayerSpectrum(sigma.pow(2).cpu(), w.shape[0], w.shape[1])

    run_blockwise(model, layout, ctx, process)
    return spectra


@register(SVDLLMConfig)
class SVDLLMEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: SVDLLMConfig, ctx: StepContext) -> dict[str, Any]:
        layout, chosen = targeted_linears(model, cfg)
        ranks = uniform_ranks(layer_shapes(chosen), cfg.ratio)  # also validates the ratio up front
        second = ctx
        if cfg.allocation == "global":
            first = _scaled(ctx, 0.0, 0.2, ALLOCATION_SAMPLES)
            ranks = allocate_ranks(whitened_spectra(model, layout, chosen, first), cfg.ratio)
            second = _scaled(ctx, 0.2, 1.0)
        shapes = layer_shapes(chosen)
        ranks = {n: round_rank(r, cfg.rank_multiple, min(shapes[n])) for n, r in ranks.items()}
        layers: list[dict[str, Any]] = []

        def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
            if not chosen[i]:
                return
            covs = block_covariances(block, chosen[i], inputs)
            for name, mod in chosen[i].items():
                layers.append(self._layer_(model, name, mod, covs.pop(name), ranks[name]))

        run_blockwise(model, layout, second, process)
        return {"allocation": cfg.allocation, **summarize(layers)}

    def _layer_(self, model: nn.Module, name: str, mod: nn.Module, h: torch.Tensor, rank: int) -> dict[str, Any]:
        w = get_weight(mod).double()
        s_factor, damp = whitening(h)
        u, sigma = whitened_svd(w, s_factor)
        b, a = whitened_factors(w, u, sigma, rank)
        factorize_(model, name, mod, b, a)
        energy = sigma.pow(2)
        rel = float((energy[rank:].sum() / energy.sum().clamp_min(1e-30)).sqrt())
        out_f, in_f = w.shape
        if damp:
            log.info("%s: input covariance damped by %.3g", name, damp)
        return {"name": name, "rank": rank, "params_before": out_f * in_f, "params_after": rank * (out_f + in_f),
                "rel_output_error": rel, "damping": damp}
