"""SparseGPT engine: layer-sequential OBS pruning, unstructured or N:M, optionally joint with quantization.

Per block: one forward over the calibration inputs accumulates each targeted linear's Hessian,
then each linear is pruned by :func:`sparsegpt_prune`; the pruned block produces the inputs of
the next. With ``bits`` set, the result is stored quantized (``set_quantized_``) so the exporter
packs it; pruned weights stay exactly zero.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from presso.compression.configs.pruning import SparseGPTConfig
from presso.compression.configs.quantization import QuantArgs
from presso.compression.core.context import StepContext
from presso.compression.core.layout import get_weight, in_out, set_quantized_, set_weight_
from presso.compression.core.quant import quantize_rtn, resolve_group
from presso.compression.engines.pruning.calibrated import magnitude_fallback, plan, prune_blockwise
from presso.compression.engines.pruning.common import Hessians, layer_record, summarize
from presso.compression.engines.pruning.sparsegpt.sparsegpt_math import sparsegpt_prune
from presso.compression.errors import InvalidRecipe
from presso.compression.registry import register

log = logging.getLogger(__name__)


def joint_args(cfg: SparseGPTConfig, module: nn.Module, name: str) -> QuantArgs | None:
    if cfg.bits is None:
        return None
    k, _ = in_out(module)
    if cfg.group_size > k and "group_size" in cfg.model_fields_set:
        raise InvalidRecipe(f"group_size {cfg.group_size} is larger than the input width {k} of {name}")
    return QuantArgs(bits=cfg.bits, group_size=resolve_group(k, cfg.group_size), symmetric=cfg.symmetric)


@register(SparseGPTConfig)
class SparseGPTEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: SparseGPTConfig, ctx: StepContext) -> dict[str, Any]:
        p = plan(model, cfg, ctx)
        schemes = {n: joint_args(cfg, m, n) for lins in p.chosen.values() for n, m in lins.items()}

        def prune_layer(name: str, mod: nn.Module, hessians: Hessians, sparsity: float) -> dict[str, Any]:
            return self._prune_one(name, mod, hessians.pop(name), cfg, sparsity, schemes[name])

        magnitude = magnitude_fallback(cfg)

        def fallback(name: str, mod: nn.Module, sparsity: float, why: str) -> dict[str, Any]:
            rec = magnitude(name, mod, sparsity, why)  # then the same joint quantization, data-free
            qargs = schemes[name]
            if qargs is not None:
                w = get_weight(mod)
                set_quantized_(mod, quantize_rtn(w, qargs))  # zeros stay exactly zero
                rec.update(bits=qargs.bits, group_size=qargs.group_size)
            return rec

        layers = prune_blockwise(model, p, ctx, Hessians, prune_layer, fallback, stats_bytes=lambda k: 4 * k * k)
        out = {"layers": layers, "allocation": cfg.allocation, "block_sparsity": p.sparsities, **summarize(layers),
               **p.expert_observation()}
        if cfg.bits is not None:
            out["bits"] = cfg.bits
        return out

    @staticmethod
    def _prune_one(name: str, mod: nn.Module, h: torch.Tensor, cfg: SparseGPTConfig, sparsity: float,
                   qargs: QuantArgs | None) -> dict[str, Any]:
        w = get_weight(mod).float()
        res = sparsegpt_prune(w, h, sparsity=sparsity, nm=cfg.nm, block_size=cfg.block_size,
                              damp=cfg.damp_percent, qargs=qargs)
        if res.quantized is not None:
            set_quantized_(mod, res.quantized)
        else:
            set_weight_(mod, res.weight)
        rec = layer_record(name, mod, cfg.effective_sparsity if cfg.nm else sparsity, cfg)
        rec["loss"] = res.loss
        if qargs is not None:
            rec.update(bits=qargs.bits, group_size=qargs.group_size)
        return rec
