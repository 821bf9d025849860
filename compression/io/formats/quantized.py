"""pack-quantized: quantized linears as compressed-tensors ``pack-quantized`` tensors.

Per quantized Linear ``<name>``: ``weight_packed`` (int32, ``ceil(K·b/32)`` words per row),
``weight_scale`` (model dtype), ``weight_shape`` (int64 [2]) and, when asymmetric, ``weight_zero_point``
(int32, packed along dim 0: ``[ceil(N·b/32), groups]``), the layout of compressed-tensors'
``PackedQuantizationCompressor.compress`` and what vLLM reads. config.json gets a compressed-tensors
``quantization_config`` with one config group per (bits, group, symmetric) scheme, targeting exact
module names, and ``"dequantize": true`` when there is one scheme.

Why ``dequantize: true``: transformers 5.x builds the compressed modules on the meta device, where
compressed-tensors 0.20.1 packs the weight but not the zero point (``compress`` of a meta weight skips
it), so the model expects an unpacked ``weight_zero_point`` [N, groups] while the checkpoint holds the
packed one: every asymmetric layer is a size mismatch and ``from_pretrained`` raises. Unpacked zero
points do not help either: the first forward's decompression unpacks them again (int32 expected). With
``dequantize`` (``CompressedTensorsConfig(dequantize=True)``, read from config.json) transformers
decompresses each layer from the checkpoint's own tensors at load time, which unpacks the zero point as
written. It also makes the loaded layers plain ``nn.Linear`` with a ``weight``, which PEFT needs for
the EoRA adapter. vLLM ignores the key.

Why only with one scheme: transformers' load-time dequantization (``CompressedTensorsDequantize``) uses
ONE scheme for every dense layer (``get_dense_scheme``: the first config group), so with several groups
(mixed bits, a narrow layer's per-channel fallback) it would dequantize some layers with another layer's
group size or symmetry. Without the flag transformers applies each layer's own scheme, which is right for
symmetric groups; an asymmetric group then fails loudly (the zero-point size mismatch above), and so does
PEFT (compressed modules have no ``weight``). ``loaders_for`` says so per artifact.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from presso.compression.core.experts import group_targets_experts
from presso.compression.core.layout import quantized_of
from presso.compression.core.packing import pack_int, pack_zero_points
from presso.compression.core.staging import to_device, to_host
from presso.compression.io.formats.base import Format, LoadContext, WriteOptions
from presso.compression.io.formats.device import export_device

log = logging.getLogger(__name__)


def _scheme_key(qw: Any) -> tuple[int, int, bool]:
    return (qw.bits, qw.group_size, qw.symmetric)


def _weights_args(bits: int, group_size: int, symmetric: bool) -> dict[str, Any]:
    grouped = group_size > 0
    return {
        "num_bits": bits,
        "type": "int",
        "symmetric": symmetric,
        "strategy": "group" if grouped else "channel",
        "group_size": group_size if grouped else None,
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
    }


class PackQuantized(Format):
    name = "pack-quantized"
    loaders = ("presso.load", "transformers", "peft", "vllm")
    reads_quantization_config = True

    def export(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any],
               options: WriteOptions) -> bool:
        groups: dict[tuple[int, int, bool], list[str]] = defaultdict(list)
        device = export_device()
        for name, mod in model.named_modules():
            qw = quantized_of(mod)
            if qw is None or f"{name}.weight" not in state or not isinstance(mod, nn.Linear):
                continue
            dtype = state[f"{name}.weight"].dtype
            del state[f"{name}.weight"]
            state[f"{name}.weight_packed"] = to_host(pack_int(to_device(qw.q, device), qw.bits))
            state[f"{name}.weight_scale"] = qw.scale.to(dtype)
            state[f"{name}.weight_shape"] = torch.tensor(list(qw.q.shape), dtype=torch.int64)
            if qw.zero is not None:
                state[f"{name}.weight_zero_point"] = pack_zero_points(qw.zero, qw.bits)
            groups[_scheme_key(qw)].append(name)
        if not groups:
            return False
        config["quantization_config"] = pack_quantized_config(groups)
        return True

    def present(self, ctx: LoadContext) -> bool:
        qcfg = ctx.qcfg
        groups = (qcfg.get("config_groups") or {}).values()
        if qcfg.get("format") == "mixed-precision":  # with formats.ctquant's forms: the groups' own formats
            return any(_format_of(g, qcfg) == "pack-quantized" for g in groups)
        return bool(qcfg.get("config_groups")) and qcfg.get("format") in (None, "pack-quantized")

    def loaders_for(self, ctx: LoadContext) -> tuple[str, ...]:
        groups = list((ctx.qcfg.get("config_groups") or {}).values())
        symmetric = all((g.get("weights") or {}).get("symmetric", True) for g in groups)
        if not symmetric and any(group_targets_experts(g) for g in groups):
            return ("presso.load", "vllm")  # transformers cannot convert asymmetric per-expert weights (issue 20)
        if len(groups) <= 1 or ctx.qcfg.get("dequantize"):
            return self.loaders
        return ("presso.load", "vllm", *(("transformers",) if symmetric else ()))

    def load(self, model: nn.Module, state: dict[str, torch.Tensor], ctx: LoadContext) -> None:
        if ctx.packed:
            log.info("kept %d pack-quantized layers packed", pack_layers_(model, state, ctx.qcfg, ctx.dtype))
        else:
            dequantize_packed_(state, ctx.qcfg, ctx.dtype)


def pack_quantized_config(groups: dict[tuple[int, int, bool], list[str]]) -> dict[str, Any]:
    """The compressed-tensors ``quantization_config`` of pack-quantized layers: (bits, group, symmetric) -> the
    module names in model order (what ``PackQuantized.export`` collects; the streaming writer collects it
    block by block)."""
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        **({"dequantize": True} if len(groups) == 1 else {}),
        "config_groups": {
            f"group_{i}": {
                "targets": ["re:^(" + "|".join(re.escape(n) for n in names) + ")$"],
                "weights": _weights_args(*key),
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
            for i, (key, names) in enumerate(sorted(groups.items()))
        },
        "ignore": [],
    }


def _weight_args(name: str, qcfg: dict[str, Any]) -> dict[str, Any]:
    groups = list((qcfg.get("config_groups") or {}).values())
    for group in groups:
        for t in group.get("targets", []):
            if (t.startswith("re:") and re.match(t[3:], name)) or t in (name, "Linear"):
                return group.get("weights") or {}
    return (groups[0].get("weights") or {}) if groups else {}


def _format_of(group: dict[str, Any], qcfg: dict[str, Any]) -> str | None:
    """A config group's compressed-tensors format (its own, else the config's; none: pack-quantized)."""
    return group.get("format") or qcfg.get("format") or "pack-quantized"


def _is_packed_int(name: str, qcfg: dict[str, Any]) -> bool:
    """Whether layer ``name`` is pack-quantized (not one of formats.ctquant's forms in a mixed artifact)."""
    for group in (qcfg.get("config_groups") or {}).values():
        for t in group.get("targets", []):
            if (t.startswith("re:") and re.match(t[3:], name)) or t in (name, "Linear"):
                return _format_of(group, qcfg) == "pack-quantized"
    return True


def _check_format(qcfg: dict[str, Any]) -> None:
    from presso.compression.errors import ModelLoadError

    if qcfg.get("format") not in (None, "pack-quantized", "mixed-precision"):
        raise ModelLoadError(f"presso.load reads pack-quantized layers, not {qcfg.get('format')!r}")


def dequantize_packed_(state: dict[str, torch.Tensor], qcfg: dict[str, Any], dtype: torch.dtype) -> None:
    """Replace every ``<name>.weight_packed`` (+ scale / zero point / shape) by a dense ``<name>.weight``."""
    from presso.compression.core.packing import unpack_int, unpack_zero_points
    from presso.compression.core.quant import dequantize_codes

    _check_format(qcfg)
    for key in [k for k in state if k.endswith(".weight_packed")]:
        name = key[: -len(".weight_packed")]
        if not _is_packed_int(name, qcfg):
            continue
        bits = int(_weight_args(name, qcfg).get("num_bits", 4))
        n, k = (int(d) for d in state.pop(f"{name}.weight_shape").tolist())
        q = unpack_int(state.pop(key), bits, k)
        scale = state.pop(f"{name}.weight_scale").float()
        zp = state.pop(f"{name}.weight_zero_point", None)
        zero = unpack_zero_points(zp, bits, n).float() if zp is not None else torch.zeros_like(scale)
        group = _group_size(_weight_args(name, qcfg), k, scale.shape[1]) or k
        state[f"{name}.weight"] = dequantize_codes(q, scale, zero, group).to(dtype)


def _group_size(args: dict[str, Any], k: int, n_groups: int) -> int | None:
    """The layer's group size (None: one scale per output channel), checked against its scales."""
    from presso.compression.errors import ModelLoadError

    if n_groups == 1:
        return None
    group = args.get("group_size")
    if not group:  # an older writer without the field: the only size that yields n_groups groups
        group = -(-k // n_groups)
    if -(-k // int(group)) != n_groups:
        raise ModelLoadError(f"{n_groups} scale groups do not fit K={k} with group_size={group}")
    return int(group)


def pack_layers_(model: nn.Module, state: dict[str, torch.Tensor], qcfg: dict[str, Any], dtype: torch.dtype) -> int:
    """Replace every pack-quantized Linear by a ``PackedLinear`` holding its codes (removed from ``state``)."""
    from presso.compression.engines.lowrank.modules import replace_module_
    from presso.compression.io.packed_linear import PackedLinear

    _check_format(qcfg)
    names = [k[: -len(".weight_packed")] for k in state if k.endswith(".weight_packed")]
    names = [n for n in names if _is_packed_int(n, qcfg)]
    for name in names:
        args = _weight_args(name, qcfg)
        bits = int(args.get("num_bits", 4))
        n, k = (int(d) for d in state.pop(f"{name}.weight_shape").tolist())
        scale = state.pop(f"{name}.weight_scale")
        scale = scale.to(dtype) if dtype in (torch.bfloat16, torch.float16) else scale.float()
        bias = state.pop(f"{name}.bias", None)
        mod = PackedLinear(k, n, bits, _group_size(args, k, scale.shape[1]), state.pop(f"{name}.weight_packed"),
                           scale, state.pop(f"{name}.weight_zero_point", None),
                           None if bias is None else bias.to(dtype))
        replace_module_(model, name, mod)
    return len(names)
