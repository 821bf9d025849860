"""HQQ engine: calibration-free half-quadratic quantization of each targeted linear (see hqq_math)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from presso.compression.configs.quantization import HQQConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import find_layout, get_weight, select_linears, set_quantized_
from presso.compression.core.quant import relative_error
from presso.compression.engines.quantization.common import layer_record, schemes_for
from presso.compression.engines.quantization.hqq.hqq_math import HQQParams, quantize_hqq
from presso.compression.registry import register


@register(HQQConfig)
class HQQEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: HQQConfig, ctx: StepContext) -> dict[str, Any]:
        layout = find_layout(model)
        chosen = select_linears(model, layout, cfg.targets, cfg.ignore)
        schemes = schemes_for(chosen, cfg)
        hp = HQQParams(iters=cfg.iters, lp_norm=cfg.lp_norm, beta=cfg.beta, kappa=cfg.kappa)
        layers = []
        for i, lins in chosen.items():
            for name, mod in lins.items():
                scheme = schemes[name]
                if scheme is None:
                    layers.append(layer_record(name, None, None))
                    continue
                w = get_weight(mod, ctx.device)
                w_hat = set_quantized_(mod, quantize_hqq(w, scheme, hp), ctx.device)
                layers.append(layer_record(name, scheme, relative_error(w, w_hat)))
            ctx.report((i + 1) / len(chosen))
        return {"layers": layers}
