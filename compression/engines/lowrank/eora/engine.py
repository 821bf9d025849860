"""eora: a low-rank residual per layer compensating the error of the earlier lossy steps.

Layer-sequential on the CURRENT (compressed) model: each block's linear inputs are observed with
the already-compensated blocks before it, ΔW = ctx.originals[name] - current weight, and the
module becomes a LoRAResidualLinear (base weight and its quantized codes untouched). The artifact
stores the residuals as a PEFT LoRA adapter (compression/io/formats/lowrank.py).

Scope: plain ``nn.Linear`` layers present in ``ctx.originals``. Factor layers of an earlier svd /
svd_llm step (``<name>.A`` / ``<name>.B``) have no original of their own and are skipped, as are
GPT-2 ``Conv1D`` layers; a layer compensated twice gets its residual refitted.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from presso.compression.configs.lowrank import EoRAConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import find_layout, get_weight, select_linears
from presso.compression.core.sequential import BlockInputs, run_blockwise
from presso.compression.engines.lowrank.common import block_covariances, check_rank
from presso.compression.engines.lowrank.eora.eora_math import eora_residual
from presso.compression.engines.lowrank.modules import LoRAResidualLinear, replace_module_
from presso.compression.errors import InvalidRecipe, NoTargetModules
from presso.compression.registry import register

log = logging.getLogger(__name__)


def compensable(chosen: dict[int, dict[str, nn.Module]], originals: dict[str, torch.Tensor],
                rank: int) -> dict[int, dict[str, nn.Linear]]:
    """The chosen layers EoRA can compensate; checks the rank against each before any work."""
    out: dict[int, dict[str, nn.Linear]] = {}
    for i, lins in chosen.items():
        out[i] = {}
        for name, mod in lins.items():
            if isinstance(mod, nn.Linear) and name in originals and tuple(originals[name].shape) == tuple(
                    mod.weight.shape):
                check_rank(name, mod, rank)
                out[i][name] = mod
    if not any(out.values()):
        raise NoTargetModules("eora: no targeted nn.Linear layer has an original weight to compensate toward")
    return out


@register(EoRAConfig)
class EoRAEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: EoRAConfig, ctx: StepContext) -> dict[str, Any]:
        if not ctx.originals:
            raise InvalidRecipe("eora needs the weights from before the lossy steps; run it inside a recipe "
                                "after a quantization, pruning or low-rank step")
        layout = find_layout(model)
        targets = compensable(select_linears(model, layout, cfg.targets, cfg.ignore), ctx.originals, cfg.rank)
        layers: list[dict[str, Any]] = []

        def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
            if not targets[i]:
                return
            covs = block_covariances(block, targets[i], inputs)
            for name, mod in targets[i].items():
                layers.append(self._layer_(model, name, mod, covs.pop(name), ctx.originals[name], cfg.rank))

        run_blockwise(model, layout, ctx, process)
        added = sum(r["params_added"] for r in layers)
        return {"rank": cfg.rank, "params_added": added, "layers": layers}

    def _layer_(self, model: nn.Module, name: str, mod: nn.Linear, h: torch.Tensor, original: torch.Tensor,
                rank: int) -> dict[str, Any]:
        w = get_weight(mod)
        delta = original.to(w.device, torch.float64) - w.double()
        res = eora_residual(delta, h, rank)
        replace_module_(model, name, LoRAResidualLinear.wrap(mod, res.b, res.a))
        before, after = res.output_errors()
        return {"name": name, "rank": rank, "params_added": rank * sum(w.shape),
                "output_error_before": before, "output_error_after": after,
                "error_ratio": after / before if before > 0 else 0.0}
