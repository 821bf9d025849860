"""AWQ onto a float format's grid: ``awq`` with ``format`` fp8 / nvfp4 / mxfp4 (issue 19).

Per block, as for the integer grids (engine.py): one observing forward (input Hessian and mean |x| per input group),
the producers found and verified (fold.py), and per group the activation exponent searched on the linears' exact
output error ``tr(dW H dW^T)`` (awq_math.search_scales), here with ``W diag(s)`` rounded by the format's own
round-to-nearest quantizer (:func:`group_quant`: FP8 E4M3 per tensor / channel / 128x128 block, NVFP4 E2M1 in groups
of 16 under FP8 group scales and the per-tensor global scale shared by fused siblings, MXFP4 E2M1 in groups of 32
under E8M0 scales), then folded into the producer as for int.

Then AWQ's clipping search (mit-han-lab/llm-awq awq/quantize/auto_clip.py ``auto_clip_layer``: per output row and
input group, the max-|w| shrink ratio among ``1 - i/20``, ``i < 10``, that minimizes the group's share of the
output; q_proj / k_proj are not clipped, as ``auto_clip_block`` skips them): the group share of the error is
``dW_g H_gg dW_g^T`` with the diagonal blocks of the folded inputs' Hessian, the groups being the format's scale
groups (NVFP4 16, MXFP4 32 columns; FP8 per channel: the whole row). FP8 per tensor and per block share one scale
over rows, so they are not clipped. NVFP4 keeps the global scale of the unclipped weights (the search's), which the
final quantization is given.

Last, the block is quantized by the fp8 / nvfp4 / mxfp4 step's own code (formats/engine.py ``FormatEngine._block``:
calibrated activation scales of the folded inputs, GPTQ rounding with ``solver: gptq``), so the codes, scales,
activation quantizers, report and artifact are exactly the ones that step writes for these weights.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from presso.compression.configs.formats import MXFP4Config
from presso.compression.configs.quantization import AWQConfig
from presso.compression.core.context import StepContext
from presso.compression.core.experts import starved_experts
from presso.compression.core.floatquant import (
    FP8_BLOCK,
    NVFP4_GROUP,
    nvfp4_global_scale,
    quantize_nvfp4,
    quantize_weight,
)
from presso.compression.core.layout import block_linears, get_weight, set_weight_
from presso.compression.core.sequential import BlockInputs
from presso.compression.engines.quantization.awq.awq_math import GroupQuant
from presso.compression.engines.quantization.formats.engine import (
    FUSED_LAYER_NAMES,
    FormatEngine,
    LayerPlan,
    plan_layer,
)
from presso.compression.engines.quantization.gptq.observe import observe_block

log = logging.getLogger(__name__)
CLIP_RATIOS = tuple(1 - i / 20 for i in range(10))  # llm-awq's n_grid 20, max_shrink 0.5
NOT_CLIPPED = ("q_proj", "k_proj")


def fused_sets(names: list[str], plans: dict[str, LayerPlan]) -> list[list[str]]:
    """NVFP4 members of ``names`` that share one weight global scale (formats/engine.py ``FUSED_LAYER_NAMES``),
    and every other NVFP4 member alone."""
    out: dict[tuple[str, int], list[str]] = {}
    for name in names:
        if plans[name].kind != "nvfp4":
            continue
        parent, _, leaf = name.rpartition(".")
        key = next(((parent, i) for i, g in enumerate(FUSED_LAYER_NAMES) if leaf in g), (name, -1))
        out.setdefault(key, []).append(name)
    return list(out.values())


def joint_global_scales(ws: dict[str, torch.Tensor], plans: dict[str, LayerPlan]) -> dict[str, torch.Tensor]:
    """NVFP4 global scale of each NVFP4 weight in ``ws``: from the joint absmax of its fused set."""
    out: dict[str, torch.Tensor] = {}
    for names in fused_sets(list(ws), plans):
        gs = nvfp4_global_scale(torch.stack([ws[n].abs().amax() for n in names]).amax())
        out.update(dict.fromkeys(names, gs))
    return out


def quantize_dequant(w: torch.Tensor, plan: LayerPlan, mx_mode: str, global_scale: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Round-to-nearest onto the layer's grid, dequantized (float32), as the format step quantizes."""
    if plan.kind == "nvfp4":
        return quantize_nvfp4(w, global_scale).dequantize()
    return quantize_weight(w, plan.kind, plan.strategy, FP8_BLOCK, mx_mode).dequantize(w.device)


def group_quant(names: list[str], plans: dict[str, LayerPlan], mx_mode: str) -> GroupQuant:
    """The group's quantizer for the scale search: fused NVFP4 siblings share the global scale of their joint
    absmax, recomputed for every candidate scaling, as the final quantization computes it."""
    def quant(ws: list[torch.Tensor]) -> list[torch.Tensor]:
        gs = joint_global_scales(dict(zip(names, ws, strict=True)), plans)
        return [quantize_dequant(w, plans[n], mx_mode, gs.get(n)) for n, w in zip(names, ws, strict=True)]
    return quant


def clip_group(plan: LayerPlan) -> int | None:
    """Columns of one clipping group (the format's scale group), or None where scales span rows."""
    if plan.kind in ("nvfp4", "mxfp4"):
        return NVFP4_GROUP if plan.kind == "nvfp4" else 32
    return 0 if plan.kind == "fp8" and plan.strategy == "channel" else None  # 0: the whole row


@torch.no_grad()
def search_clip(w: torch.Tensor, h: torch.Tensor, plan: LayerPlan, mx_mode: str,
                global_scale: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """AWQ's clipping: ``w`` [N, K] with each (row, group) clamped to its best ratio of its absmax, and the mean
    ratio chosen. ``h``: the Hessian of the inputs ``w`` reads."""
    n, k = w.shape
    g = clip_group(plan) or k
    groups = k // g
    w = w.float()
    wg = w.reshape(n, groups, g)
    amax = wg.abs().amax(dim=-1, keepdim=True)
    idx = torch.arange(groups, device=w.device)
    hb = h.float().reshape(groups, g, groups, g)[idx, :, idx, :]  # [G, g, g] diagonal blocks
    best = torch.full((n, groups), float("inf"), device=w.device)
    ratio = torch.ones(n, groups, 1, device=w.device)
    for r in CLIP_RATIOS:
        lim = amax * r
        wq = quantize_dequant(torch.maximum(torch.minimum(wg, lim), -lim).reshape(n, k), plan, mx_mode, global_scale)
        dw = (wq - w).reshape(n, groups, g)
        err = torch.einsum("ngi,gij,ngj->ng", dw, hb, dw)
        better = err < best
        best = torch.where(better, err, best)
        ratio = torch.where(better.unsqueeze(-1), torch.full_like(ratio, r), ratio)
    lim = amax * ratio
    return torch.maximum(torch.minimum(wg, lim), -lim).reshape(n, k), float(ratio.mean())


def process_block(model: nn.Module, cfg: AWQConfig, ctx: StepContext, prefix: str, block: nn.Module,
                  inputs: BlockInputs, quant: dict[str, nn.Module], plan: dict, verifier: Any) -> list[dict[str, Any]]:
    """One block of ``awq`` with a float format: search and fold, clip, then the format step's quantization."""
    from presso.compression.engines.quantization.awq.engine import _rel, _scale_group, plan_block

    fcfg = cfg.format_step()
    plans = {n: plan_layer(fcfg, n, m) for n, m in quant.items()}
    mx_mode = "ocp" if isinstance(fcfg, MXFP4Config) and fcfg.scale_rule == "floor" else "ct"
    groups = observe_block(block, inputs, block_linears(block, prefix), ctx.device)
    starved = starved_experts(model, quant, cfg.expert_min_tokens)
    plan_block(block, prefix, groups, inputs, plan)
    notes: dict[str, dict[str, Any]] = {}
    hessians: dict[str, torch.Tensor] = {}
    for members in groups.groups().values():
        q = [n for n in members if n in quant]
        if not q or any(n in starved for n in members):
            continue
        producer = plan[_rel(members, prefix)]
        if producer is None:
            h, note = groups.hessian(members[0]), {"producer": None, "reason": "no foldable producer"}
        else:
            grid = (q, group_quant(q, plans, mx_mode))
            h, note = _scale_group(block, prefix, members, producer, groups, {}, cfg, verifier, grid)
        for n in q:
            notes[n], hessians[n] = dict(note), h
    ws = {n: get_weight(m, ctx.device) for n, m in quant.items()}
    fixed = joint_global_scales(ws, plans)  # NVFP4: the unclipped (folded) weights' global scales
    for name, h in hessians.items():
        if clip_group(plans[name]) is None or name.rpartition(".")[2] in NOT_CLIPPED:
            continue
        clipped, mean_ratio = search_clip(ws[name], h.to(ctx.device), plans[name], mx_mode, fixed.get(name))
        set_weight_(quant[name], clipped)
        notes[name]["clip_ratio_mean"] = mean_ratio
    records = FormatEngine()._block(quant, block, inputs, plans, fcfg, ctx, cfg.solver == "gptq", fixed)
    for rec in records:
        rec["awq"] = notes.get(rec["name"], {"producer": None, "reason": "not calibrated (starved expert or unseen)"})
    return records
