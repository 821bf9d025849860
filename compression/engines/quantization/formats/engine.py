"""Engines of the deployment formats: fp8, int8 (W8A8), nvfp4, mxfp4.

Each quantizes the chosen Linear weights into its format (``module.presso_format``: codes and scales as the
artifact stores them, and the dequantized weight in ``module.weight``) and installs the scheme's activation
quantizer (compression.core.actquant) on the layer, so the job's evaluation and gate see quantized activations.

Schemes with static activation scales (FP8 static, INT8 static, NVFP4's global scale) and GPTQ rounding
(int8 on its integer grid; fp8 / nvfp4 / mxfp4 onto their own grids: formats/gptq_format.py) calibrate
layer by layer (compression.core.sequential.run_blockwise): a block's Linear inputs are
observed with the earlier blocks already quantized, weights and activations included; the block is then
quantized and its (quantized) output feeds the next block. Dynamic schemes need no data and quantize each
layer directly.

Per-layer report: format, weight strategy, relative weight error, the activation scheme and, from the
quantizer, the per-token absmax range and clipping rate of the inputs it has seen since the step (the
evaluation windows in a job; calibration statistics are reset at the end of the step), and the calibrated
absmax / static scale where there is one. A layer the scheme cannot take raises ``invalid_recipe`` before
any work (NVFP4 / MXFP4 need an input width that is a multiple of 16 / 32); FP8_BLOCK's 128-column
activation groups fall back to per-token scales on a layer whose width 128 does not divide (recorded).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from presso.compression.configs.formats import (
    FormatStep,
    FP8Config,
    GPTQRounding,
    INT8Config,
    MXFP4Config,
    NVFP4Config,
)
from presso.compression.configs.quantization import QuantArgs
from presso.compression.core import actquant
from presso.compression.core.context import StepContext
from presso.compression.core.floatquant import (
    FP8_BLOCK,
    MXFP4_GROUP,
    NVFP4_GROUP,
    ActScheme,
    FormatWeight,
    int8_weight,
    nvfp4_global_scale,
    quantize_nvfp4,
    quantize_weight,
    static_act_scale,
)
from presso.compression.core.layout import find_layout, get_weight, select_linears, set_quantized_, set_weight_
from presso.compression.core.quant import quantize_rtn, relative_error
from presso.compression.core.sequential import BlockInputs, observe_inputs, run_blockwise
from presso.compression.core.targets import targeted_linears
from presso.compression.engines.quantization.formats.gptq_format import gptq_format
from presso.compression.errors import InvalidRecipe
from presso.compression.registry import register

log = logging.getLogger(__name__)

FORMAT_ATTR = "presso_format"
INT8_ARGS = QuantArgs(bits=8, group_size=-1, symmetric=True)
# Linears a serving engine fuses into one GEMM (vLLM's qkv_proj, gate_up_proj): NVFP4 layers of one group share
# one weight global scale, from their joint absmax, as vLLM requires (it keeps one global scale per fused layer)
# and llm-compressor writes (observers/helpers.py FUSED_LAYER_NAMES).
FUSED_LAYER_NAMES = (("gate_proj", "up_proj"), ("q_proj", "k_proj", "v_proj"), ("q_a_proj", "kv_a_proj_with_mqa"),
                     ("w1", "w3"))


def format_of(module: nn.Module) -> FormatWeight | None:
    return getattr(module, FORMAT_ATTR, None)


@dataclass(frozen=True)
class LayerPlan:
    kind: str  # fp8 | int8 | nvfp4 | mxfp4
    strategy: str  # weight strategy
    act: ActScheme | None
    note: str | None = None


def _act(cfg: FormatStep, k: int) -> tuple[ActScheme | None, str | None]:
    if isinstance(cfg, FP8Config):
        mode = cfg.act_mode()
        if mode == "dynamic_group":
            if k % 128:
                return ActScheme("fp8", "token", True), (
                    f"input width {k} is not a multiple of 128: activations per token instead of per 128-group")
            return ActScheme("fp8", "group", True, 128), None
        return {"dynamic_token": ActScheme("fp8", "token", True), "static_tensor": ActScheme("fp8", "tensor", False),
                "none": None}[mode], None
    if isinstance(cfg, INT8Config):
        return {"dynamic_token": ActScheme("int8", "token", True),
                "static_tensor": ActScheme("int8", "tensor", False), "none": None}[cfg.activations], None
    if isinstance(cfg, NVFP4Config):
        return (ActScheme("nvfp4", "tensor_group", "local", NVFP4_GROUP) if cfg.scheme == "NVFP4" else None), None
    if isinstance(cfg, MXFP4Config):
        return (ActScheme("mxfp4", "group", True, MXFP4_GROUP) if cfg.scheme == "MXFP4" else None), None
    raise TypeError(type(cfg).__name__)


def fused_global_scales(lins: Mapping[str, nn.Module], plans: dict[str, LayerPlan],
                        device: torch.device) -> dict[str, torch.Tensor]:
    """NVFP4 weight global scales shared by each group of fused siblings (all of them NVFP4 layers here)."""
    out: dict[str, torch.Tensor] = {}
    for group in FUSED_LAYER_NAMES:
        parents: dict[str, list[str]] = {}
        for name in lins:
            parent, _, leaf = name.rpartition(".")
            if leaf in group and plans[name].kind == "nvfp4":
                parents.setdefault(parent, []).append(name)
        for names in parents.values():
            if len(names) < 2:
                continue
            amax = torch.stack([get_weight(lins[n], device).abs().amax() for n in names]).amax()
            gs = nvfp4_global_scale(amax)
            out.update(dict.fromkeys(names, gs))
    return out


def plan_layer(cfg: FormatStep, name: str, mod: nn.Module) -> LayerPlan:
    """What ``cfg`` does to the Linear ``name``; ``invalid_recipe`` for a layer its format cannot hold."""
    if not isinstance(mod, nn.Linear):
        raise InvalidRecipe(f"{cfg.method}: {name} is a {type(mod).__name__}, not a Linear; the compressed-tensors "
                            "formats describe Linear layers (ignore it, or use rtn/gptq)")
    n, k = mod.weight.shape
    act, note = _act(cfg, int(k))
    if isinstance(cfg, FP8Config):
        return LayerPlan("fp8", cfg.weight_strategy(), act, note)
    if isinstance(cfg, INT8Config):
        return LayerPlan("int8", "channel", act, note)
    group = NVFP4_GROUP if isinstance(cfg, NVFP4Config) else MXFP4_GROUP
    if k % group:
        raise InvalidRecipe(f"{cfg.method}: the input width {k} of {name} is not a multiple of {group} (the format's "
                            "group); ignore that layer")
    return LayerPlan(cfg.method, "tensor_group" if isinstance(cfg, NVFP4Config) else "group", act, note)


def _record(name: str, plan: LayerPlan, fw: FormatWeight | None, err: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"name": name, "format": plan.kind, "weights": plan.strategy, "rel_error": err}
    if plan.kind == "fp8" and plan.strategy == "block":
        rec["block"] = list(FP8_BLOCK)
    if fw is not None:
        n, k = fw.shape
        rec["bits_per_weight"] = fw.storage_bits() / (n * k)
        if fw.group_size:
            rec["group_size"] = fw.group_size
    else:
        rec["bits"] = 8
    if plan.note:
        rec["note"] = plan.note
    return rec


class FormatEngine:
    """Shared by the four format steps; the plan per layer says what each one does."""

    def preflight(self, model: nn.Module, cfg: FormatStep) -> None:
        layout = find_layout(model)
        for lins in select_linears(model, layout, cfg.targets, cfg.ignore).values():
            for name, mod in lins.items():
                plan_layer(cfg, name, mod)

    def _quantize(self, mod: nn.Module, plan: LayerPlan, cfg: FormatStep, device: torch.device,
                  hessian: torch.Tensor | None, global_scale: torch.Tensor | None = None
                  ) -> tuple[FormatWeight | None, float]:
        w = get_weight(mod, device)
        if plan.kind == "int8":
            if hessian is not None and isinstance(cfg, INT8Config):
                from presso.compression.engines.quantization.gptq.gptq_math import quantize_weight as gptq

                qw, _ = gptq(w, hessian, INT8_ARGS, damp_percent=cfg.damp_percent, block_size=cfg.block_size)
            else:
                qw = quantize_rtn(w, INT8_ARGS)
            if plan.act is None:  # int8 weights only: the pack-quantized form (vLLM's W8A16)
                w_hat = set_quantized_(mod, qw, device)
                return None, relative_error(w, w_hat)
            fw = int8_weight(qw.q, qw.scale)
        else:
            if plan.kind == "nvfp4" and global_scale is not None:  # shared by fused siblings
                f = quantize_nvfp4(w, global_scale.to(w.device))
                fw = FormatWeight("nvfp4", "tensor_group", f.codes, f.scale, f.global_scale, group_size=f.group_size)
            else:
                mode = "ocp" if isinstance(cfg, MXFP4Config) and cfg.scale_rule == "floor" else "ct"
                fw = quantize_weight(w, plan.kind, plan.strategy, FP8_BLOCK, mode)
            if hessian is not None and isinstance(cfg, GPTQRounding):  # onto the same grid, second-order
                fw, _ = gptq_format(w, hessian, fw, damp_percent=cfg.damp_percent, block_size=cfg.block_size)
        w_hat = fw.dequantize(device)
        set_weight_(mod, w_hat)  # drops earlier codes (presso_quant / presso_format)
        setattr(mod, FORMAT_ATTR, fw.cpu())
        return fw, relative_error(w, w_hat)

    def _install(self, mod: nn.Module, plan: LayerPlan, rec: dict[str, Any], absmax: torch.Tensor | None) -> None:
        if plan.act is None:
            actquant.remove_(mod)
            return
        scale = None
        if plan.act.static:
            if absmax is None:
                rec["act_fallback"] = "not reached by the calibration forward: activations left unquantized"
                log.warning("%s: not reached by the calibration forward; activations unquantized", rec["name"])
                actquant.remove_(mod)
                return
            scale = static_act_scale(plan.act.kind, absmax).cpu()
        q = actquant.ActQuantizer(plan.act, static_scale=scale,
                                  calib_absmax=None if absmax is None else float(absmax), record=rec)
        rec["act"] = q.summary()
        actquant.install_(mod, q)

    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: FormatStep, ctx: StepContext) -> dict[str, Any]:
        layout, chosen = targeted_linears(model, cfg)
        plans = {n: plan_layer(cfg, n, m) for lins in chosen.values() for n, m in lins.items()}
        gptq = getattr(cfg, "rounding", "rtn") == "gptq"
        installed: list[actquant.ActQuantizer] = []
        if cfg.uses_calibration():
            blocks = run_blockwise(model, layout, ctx, lambda i, block, inputs: {
                "layers": self._block(chosen[i], block, inputs, plans, cfg, ctx, gptq)})
            layers = [rec for b in blocks for rec in b["layers"]]
        else:
            layers = []
            for i, lins in chosen.items():
                shared = fused_global_scales(lins, plans, ctx.device)
                for name, mod in lins.items():
                    fw, err = self._quantize(mod, plans[name], cfg, ctx.device, None, shared.get(name))
                    rec = _record(name, plans[name], fw, err)
                    self._install(mod, plans[name], rec, None)
                    layers.append(rec)
                ctx.report((i + 1) / len(chosen))
        for lins in chosen.values():
            for mod in lins.values():
                q = actquant.quantizer_of(mod)
                if q is not None:
                    q.reset_stats()  # the report keeps what runs after the step (the evaluation)
                    installed.append(q)
        log.info("%s: %d linears quantized, %d with activation quantization", cfg.method, len(layers), len(installed))
        return {"layers": layers}

    def _block(self, lins: Mapping[str, nn.Module], block: nn.Module, inputs: BlockInputs, plans: dict[str, LayerPlan],
               cfg: FormatStep, ctx: StepContext, gptq: bool,
               global_scales: Mapping[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
        """Calibrate and quantize one block's linears. ``global_scales``: NVFP4 weight global scales fixed by the
        caller (AWQ's clipping search holds them while it clips: awq/floatgrid.py), over the fused siblings'."""
        absmax: dict[str, torch.Tensor] = {}
        groups = None
        if gptq:
            from presso.compression.engines.quantization.gptq.observe import InputGroups

            groups = InputGroups(ctx.device)

        def on_input(name: str, x: torch.Tensor) -> None:
            a = x.detach().abs().amax().float()
            absmax[name] = a if name not in absmax else torch.maximum(absmax[name], a)
            if groups is not None:
                groups.on_input(name, x)

        if lins:
            with observe_inputs(dict(lins), on_input):
                for h, kw in zip(inputs.hidden, inputs.kwargs, strict=True):
                    block(h, **kw)
                    if groups is not None:
                        groups.end_batch()
        records = []
        shared = {**fused_global_scales(lins, plans, ctx.device), **(global_scales or {})}
        for name, mod in lins.items():
            hessian = groups.hessian(name) if groups is not None and name in groups.leader_of else None
            fw, err = self._quantize(mod, plans[name], cfg, ctx.device, hessian, shared.get(name))
            rec = _record(name, plans[name], fw, err)
            if gptq:
                rec["rounding"] = "gptq" if hessian is not None else "rtn (not reached by calibration)"
            self._install(mod, plans[name], rec, absmax.get(name))
            records.append(rec)
        return records


@register(FP8Config)
class FP8Engine(FormatEngine):
    pass


@register(INT8Config)
class INT8Engine(FormatEngine):
    pass


@register(NVFP4Config)
class NVFP4Engine(FormatEngine):
    pass


@register(MXFP4Config)
class MXFP4Engine(FormatEngine):
    pass
