"""svd: truncated SVD of each targeted weight into a FactorizedLinear. No calibration."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from presso.compression.configs.lowrank import SVDConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import get_weight, in_out
from presso.compression.core.targets import targeted_linears
from presso.compression.engines.lowrank.modules import FactorizedLinear, replace_module_
from presso.compression.engines.lowrank.svd.svd_math import (
    balanced_factors,
    factor_dense_params,
    rank_for_energy,
    round_rank,
    svd,
    truncation_error,
    uniform_ranks,
)
from presso.compression.registry import register

log = logging.getLogger(__name__)


def layer_shapes(chosen: dict[int, dict[str, nn.Module]]) -> dict[str, tuple[int, int]]:
    """name -> (out, in) of every chosen layer."""
    return {name: in_out(mod)[::-1] for lins in chosen.values() for name, mod in lins.items()}


def summarize(layers: list[dict[str, Any]]) -> dict[str, Any]:
    before = sum(r["params_before"] for r in layers)
    after = sum(r["params_after"] for r in layers)
    return {"params_before": before, "params_after": after,
            "param_reduction": 1.0 - after / before if before else 0.0, "layers": layers}


def factorize_(model: nn.Module, name: str, mod: nn.Module, b: torch.Tensor, a: torch.Tensor) -> FactorizedLinear:
    """Replace ``mod`` (at full name ``name`` in ``model``) by B·A in the module's dtype and device."""
    weight: torch.Tensor = mod.weight  # type: ignore[assignment]
    bias: torch.Tensor | None = getattr(mod, "bias", None)
    home = weight.device
    new = FactorizedLinear.from_factors(b.to(home), a.to(home), None if bias is None else bias.detach(),
                                        dtype=weight.dtype)
    replace_module_(model, name, new)
    return new


@register(SVDConfig)
class SVDEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: SVDConfig, ctx: StepContext) -> dict[str, Any]:
        _, chosen = targeted_linears(model, cfg)
        ranks = uniform_ranks(layer_shapes(chosen), cfg.ratio) if cfg.ratio is not None else {}
        layers = []
        for i, lins in chosen.items():
            for name, mod in lins.items():
                layers.append(self._layer_(model, name, mod, ranks.get(name), cfg, ctx.device))
            ctx.report((i + 1) / len(chosen))
        return summarize(layers)

    def _layer_(self, model: nn.Module, name: str, mod: nn.Module, rank: int | None, cfg: SVDConfig,
                device: torch.device) -> dict[str, Any]:
        w = get_weight(mod, device)
        u, s, vh = svd(w)
        if rank is None:
            assert cfg.energy is not None
            rank = rank_for_energy(s, cfg.energy)
        out_f, in_f = w.shape
        rank = round_rank(rank, cfg.rank_multiple, min(out_f, in_f))
        factored, dense = factor_dense_params(out_f, in_f, rank)
        rec: dict[str, Any] = {"name": name, "rank": rank, "params_before": dense}
        if factored >= dense:  # only with energy: that rank saves nothing, keep the layer dense
            return {**rec, "params_after": dense, "kept_dense": True, "rel_error": 0.0}
        b, a = balanced_factors(u, s, vh, rank)
        factorize_(model, name, mod, b, a)
        rel = truncation_error(s, rank) / max(float(s.double().norm()), 1e-12)
        return {**rec, "params_after": factored, "rel_error": rel}
