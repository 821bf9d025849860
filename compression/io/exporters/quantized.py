"""Quantized linears -> compressed-tensors ``pack-quantized`` (weight_packed/scale/zero_point/shape)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from presso.compression.core.layout import quantized_of
from presso.compression.core.packing import pack_int, pack_zero_points
from presso.compression.core.staging import to_device, to_host
from presso.compression.io.exporters.device import export_device


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


class PackQuantizedExporter:
    def export_(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
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
            return
        config["quantization_config"] = {
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "quantization_status": "compressed",
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
