"""Size metrics of a model in memory and of an artifact on disk."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from presso.compression.core.layout import find_layout, is_linear, quantized_of


def param_count(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def dense_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def weight_stats(model: nn.Module) -> dict[str, Any]:
    """Bits per weight and sparsity over the linear layers of the block list."""
    try:
        layout = find_layout(model)
    except Exception:
        return {}
    return stats_dict(*linear_bits(layout.blocks.modules()))


def linear_bits(modules: Iterable[nn.Module]) -> tuple[int, float, int]:
    """(weights, stored bits, zeros) of the linear layers among ``modules`` (summed block by block when
    streaming: compression.io.streamwrite)."""
    n_weights, bits, zeros = 0, 0.0, 0
    for m in modules:
        if not is_linear(m):
            continue
        w: torch.Tensor = getattr(m, "weight")  # noqa: B009
        qw = quantized_of(m)
        n_weights += w.numel()
        zeros += int((w == 0).sum())
        fw = getattr(m, "presso_format", None)  # fp8 / int8 W8A8 / nvfp4 / mxfp4 (compression.core.floatquant)
        if fw is not None:
            bits += fw.storage_bits()
        elif qw is not None:
            g = qw.scale.shape[1] * qw.scale.shape[0]
            # scales are stored in the model's dtype; zero points packed at `bits` each
            extra = g * (w.element_size() * 8 + (qw.bits if qw.zero is not None else 0))
            bits += w.numel() * qw.bits + extra
        else:
            bits += w.numel() * w.element_size() * 8
    return n_weights, bits, zeros


def stats_dict(n_weights: int, bits: float, zeros: int) -> dict[str, Any]:
    if n_weights == 0:
        return {}
    return {
        "linear_weights": n_weights,
        "bits_per_weight": bits / n_weights,
        "sparsity": zeros / n_weights,
    }


def artifact_bytes(out_dir: Path) -> dict[str, int]:
    weights = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file() and ".safetensors" in f.name)
    total = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    return {"weights_bytes": weights, "total_bytes": total}


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
