"""RTN engine: quantize each targeted linear independently. No calibration."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from presso.compression.configs.quantization import RTNConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import get_weight, set_quantized_
from presso.compression.core.quant import relative_error
from presso.compression.core.sequential import run_blockwise
from presso.compression.core.targets import targeted_linears
from presso.compression.engines.quantization.common import layer_record, schemes_for
from presso.compression.engines.quantization.rtn.rtn_math import quantize_rtn
from presso.compression.registry import register


@register(RTNConfig)
class RTNEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: RTNConfig, ctx: StepContext) -> dict[str, Any]:
        layout, chosen = targeted_linears(model, cfg)
        schemes = schemes_for(chosen, cfg)

        def quantize_block(i: int) -> list[dict[str, Any]]:
            layers = []
            for name, mod in chosen[i].items():
                scheme = schemes[name]
                if scheme is not None:
                    w = get_weight(mod, ctx.device)
                    w_hat = set_quantized_(mod, quantize_rtn(w, scheme), ctx.device)
                    layers.append(layer_record(name, scheme, relative_error(w, w_hat)))
                else:
                    layers.append(layer_record(name, None, None))
            return layers

        if ctx.stream is not None:  # streamed: each block is read, quantized, written and released in turn
            blocks = run_blockwise(model, layout, ctx, lambda i, _b, _x: {"layers": quantize_block(i)},
                                   calibrated=False)
            return {"layers": [rec for b in blocks for rec in b["layers"]]}
        layers = []
        for i in chosen:
            layers += quantize_block(i)
            ctx.report((i + 1) / len(chosen))
        return {"layers": layers}
