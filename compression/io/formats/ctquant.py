"""The compressed-tensors forms of the deployment formats: float-quantized (FP8), int-quantized (INT8 W8A8),
nvfp4-pack-quantized, mxfp4-pack-quantized.

Per quantized Linear ``<name>`` (what compressed-tensors' compressors write and vLLM's schemes create):

- float-quantized (fp8): ``weight`` float8_e4m3fn [N, K]; ``weight_scale`` float32 [1] (tensor), [N, 1]
  (channel) or [ceil(N/128), ceil(K/128)] (block); ``input_scale`` float32 [1] when static;
- int-quantized (int8): ``weight`` int8 [N, K]; ``weight_scale`` float32 [N, 1]; ``input_scale`` float32 [1]
  when static;
- nvfp4-pack-quantized: ``weight_packed`` uint8 [N, K/2]; ``weight_scale`` float8_e4m3fn [N, K/16];
  ``weight_global_scale`` float32 [1]; ``input_global_scale`` float32 [1] (W4A4);
- mxfp4-pack-quantized: ``weight_packed`` uint8 [N, K/2]; ``weight_scale`` uint8 (E8M0) [N, K/32].

config.json gets a compressed-tensors ``quantization_config``: one config group per (weights, input_activations)
scheme, targeting exact module names, each group carrying its ``format``; the top-level ``format`` is the one
format, or ``mixed-precision`` when an artifact holds several (then each group's ``format`` decides, as in
vLLM's ``_quantization_scheme_map_from_config``). No ``dequantize`` flag: transformers then builds the layers
compressed-tensors' way and runs the scheme's activation quantization in its forward, as Presso's evaluation
did (tests/compression/io/test_ctquant_conformance.py compares the logits).

``presso.load`` dequantizes the weights into plain Linear layers and installs the same activation quantizers
the job evaluated with (compression.core.actquant), from the artifact's ``input_activations`` and static
scales; ``with actquant.disabled(model):`` runs them weight-only.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any, ClassVar

import torch
from torch import nn

from presso.compression.core import actquant
from presso.compression.core.experts import group_targets_experts
from presso.compression.core.floatquant import (
    FP8_BLOCK,
    FormatWeight,
    act_scheme_from_config,
    kind_of,
    pack_e2m1,
    unpack_e2m1,
    weight_config,
)
from presso.compression.io.formats.base import Format, LoadContext, WriteOptions

FORMAT_ATTR = "presso_format"
_STASH = "_presso_act_scales"  # LoadContext attribute: module name -> (input args, static scale)


def _targets(names: list[str]) -> list[str]:
    return ["re:^(" + "|".join(re.escape(n) for n in names) + ")$"]


def merge_groups(config: dict[str, Any], fmt: str, groups: list[dict[str, Any]]) -> None:
    """Add config ``groups`` (each with its ``format``) to config.json's compressed-tensors quantization_config,
    creating it, or joining one another form wrote (then the top-level format becomes ``mixed-precision``)."""
    qc = config.get("quantization_config")
    if not qc or "config_groups" not in qc:
        qc = {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
              "config_groups": {}, "ignore": [], "kv_cache_scheme": None}
        config["quantization_config"] = qc
    else:
        qc.pop("dequantize", None)  # one dequantization scheme for every layer no longer holds
        for g in qc["config_groups"].values():
            g.setdefault("format", qc.get("format"))
        if qc.get("format") != fmt:
            qc["format"] = "mixed-precision"
    start = len(qc["config_groups"])
    for i, g in enumerate(groups):
        qc["config_groups"][f"group_{start + i}"] = g


def _group_format(group: dict[str, Any], qcfg: dict[str, Any]) -> str | None:
    return group.get("format") or qcfg.get("format")


def _layer_groups(qcfg: dict[str, Any], fmt: str) -> list[tuple[re.Pattern[str] | str, dict[str, Any]]]:
    out: list[tuple[re.Pattern[str] | str, dict[str, Any]]] = []
    for g in (qcfg.get("config_groups") or {}).values():
        if _group_format(g, qcfg) != fmt:
            continue
        for t in g.get("targets", []):
            out.append((re.compile(t[3:]) if t.startswith("re:") else t, g))
    return out


def _group_of(name: str, groups: list[tuple[re.Pattern[str] | str, dict[str, Any]]]) -> dict[str, Any] | None:
    for target, g in groups:
        if (isinstance(target, re.Pattern) and target.match(name)) or target == name:
            return g
    return None


class CTQuantized(Format):
    """One compressed-tensors form of the deployment formats (``kind`` is floatquant's format name)."""

    kind: ClassVar[str]
    loaders = ("presso.load", "transformers", "vllm")
    reads_quantization_config = True

    def export(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any],
               options: WriteOptions) -> bool:
        schemes: dict[tuple[str, str], list[str]] = defaultdict(list)
        for name, mod in model.named_modules():
            fw: FormatWeight | None = getattr(mod, FORMAT_ATTR, None)
            if fw is None or fw.kind != self.kind or f"{name}.weight" not in state or not isinstance(mod, nn.Linear):
                continue
            del state[f"{name}.weight"]
            quantizer = actquant.quantizer_of(mod)
            act = None if quantizer is None else quantizer.scheme
            state.update({f"{name}.{k}": v for k, v in self.tensors(fw).items()})
            if quantizer is not None and quantizer.static_scale is not None:
                key = "input_global_scale" if fw.kind == "nvfp4" else "input_scale"
                state[f"{name}.{key}"] = quantizer.static_scale.float().reshape(1).clone()
            wcfg = weight_config(fw.kind, fw.strategy, fw.block)
            schemes[(json.dumps(wcfg), json.dumps(None if act is None else act.config()))].append(name)
        if not schemes:
            return False
        merge_groups(config, self.name, [
            {"targets": _targets(names), "weights": json.loads(w), "input_activations": json.loads(a),
             "output_activations": None, "format": self.name}
            for (w, a), names in sorted(schemes.items())
        ])
        return True

    def tensors(self, fw: FormatWeight) -> dict[str, torch.Tensor]:
        if fw.kind in ("fp8", "int8"):
            return {"weight": fw.codes.contiguous(), "weight_scale": fw.scale.float().contiguous()}
        out = {"weight_packed": pack_e2m1(fw.codes).contiguous(), "weight_scale": fw.scale.contiguous()}
        if fw.global_scale is not None:
            out["weight_global_scale"] = fw.global_scale.float().reshape(1).clone()  # fused siblings share it
        return out

    def loaders_for(self, ctx: LoadContext) -> tuple[str, ...]:
        """Without transformers when mixture-of-experts linears quantize their activations or are NVFP4:
        transformers 5.25 + compressed-tensors 0.20.1 fuse the per-expert weights back into 3-D experts but run
        the experts' activations unquantized (FP8: right weights, other logits), fail to convert INT8 W8A8
        experts, and load NVFP4 experts wrong (issue 20; compression.core.experts.group_targets_experts)."""
        groups = [g for g in (ctx.qcfg.get("config_groups") or {}).values() if _group_format(g, ctx.qcfg) == self.name]
        if any((g.get("input_activations") or self.kind == "nvfp4") and group_targets_experts(g) for g in groups):
            return tuple(n for n in self.loaders if n != "transformers")
        return self.loaders

    def present(self, ctx: LoadContext) -> bool:
        """Groups of this form that Presso wrote (exact module names); another writer's checkpoint (targets
        such as "Linear", an ignore list) goes to transformers' own from_pretrained, as presso.load says."""
        groups = [g for g in (ctx.qcfg.get("config_groups") or {}).values() if _group_format(g, ctx.qcfg) == self.name]
        return bool(groups) and all(t.startswith("re:^(") for g in groups for t in g.get("targets", []))

    def load(self, model: nn.Module, state: dict[str, torch.Tensor], ctx: LoadContext) -> None:
        groups = _layer_groups(ctx.qcfg, self.name)
        stash: dict[str, tuple[dict[str, Any] | None, torch.Tensor | None]] = getattr(ctx, _STASH, {})
        names = {k.rsplit(".", 1)[0] for k in state if k.endswith(".weight_scale")}
        for name in sorted(names):
            g = _group_of(name, groups)
            if g is None:
                continue
            wargs = g.get("weights") or {}
            fw = self.from_state(name, state, wargs)
            state[f"{name}.weight"] = fw.dequantize().to(ctx.dtype)
            scale = state.pop(f"{name}.input_scale", None)
            gscale = state.pop(f"{name}.input_global_scale", None)
            stash[name] = (g.get("input_activations"), gscale if gscale is not None else scale)
        setattr(ctx, _STASH, stash)

    def from_state(self, name: str, state: dict[str, torch.Tensor], wargs: dict[str, Any]) -> FormatWeight:
        kind = kind_of(wargs)
        if kind != self.kind:
            from presso.compression.errors import ModelLoadError

            raise ModelLoadError(f"{name}: {self.name} layer with weights {wargs}")
        scale = state.pop(f"{name}.weight_scale")
        strategy = str(wargs.get("strategy"))
        if kind in ("fp8", "int8"):
            block = tuple(wargs.get("block_structure") or FP8_BLOCK)
            return FormatWeight(kind, strategy, state.pop(f"{name}.weight"), scale.float(),
                                block=(int(block[0]), int(block[1])))
        packed = state.pop(f"{name}.weight_packed")
        gs = state.pop(f"{name}.weight_global_scale", None)
        return FormatWeight(kind, strategy, unpack_e2m1(packed), scale, None if gs is None else gs.float(),
                            group_size=int(wargs.get("group_size") or 0))

    def after_load(self, model: nn.Module, ctx: LoadContext) -> None:
        stash = getattr(ctx, _STASH, {})
        for name, mod in model.named_modules():
            if name not in stash:
                continue
            args, scale = stash[name]
            scheme = act_scheme_from_config(args)
            if scheme is not None:
                actquant.install_(mod, actquant.ActQuantizer(scheme, static_scale=scale, record={"name": name}))


class FloatQuantized(CTQuantized):
    name = "float-quantized"
    kind = "fp8"


class IntQuantized(CTQuantized):
    name = "int-quantized"
    kind = "int8"


class NVFP4PackQuantized(CTQuantized):
    name = "nvfp4-pack-quantized"
    kind = "nvfp4"


class MXFP4PackQuantized(CTQuantized):
    name = "mxfp4-pack-quantized"
    kind = "mxfp4"


CT_FORMATS: tuple[CTQuantized, ...] = (FloatQuantized(), IntQuantized(), NVFP4PackQuantized(), MXFP4PackQuantized())
