"""Sparse linears -> compressed-tensors ``sparse-bitmask`` (values + bitmask + row offsets + shape).

Per weight ``<name>.weight`` [rows, cols] the artifact holds
``<name>.weight.compressed`` (the non-zero values, row-major, in the weight's dtype),
``<name>.weight.bitmask`` (uint8 [rows, ceil(cols/8)], numpy.packbits little bit order),
``<name>.weight.row_offsets`` (int64 [rows], index of each row's first value) and
``<name>.weight.shape`` (int64 [2]); config.json gets ``quantization_config.sparsity_config``
with format ``sparse-bitmask``, the layout of compressed-tensors' BitmaskCompressor.

* "Zero" means all bits zero, so -0.0 is stored as a value and the round trip is bit-exact.
* A layer is stored sparse only when that is smaller than dense: (1 - s) * bits + 1 bit per weight
  plus 8 bytes per row, i.e. above ~1/bits sparsity (6.3% for 16-bit, 3.1% for fp32 weights).
* Quantized modules are left to the pack-quantized exporter, which runs first and claims them:
  compressed-tensors has no sparse form of packed int4 weights that a loader reads (see
  docs/pruning.md), so sparse + quantized layers are stored packed.

Loading: compressed-tensors >= 0.15 dropped the legacy sparse decompressors, and transformers 5.x
then loads such a checkpoint with those layers MISSING (randomly initialized). Presso reads it with
:func:`decompress_state_`; see docs/pruning.md for the trade-off and the ``dense`` output format.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.core.layout import quantized_of

SUFFIXES = ("compressed", "bitmask", "row_offsets", "shape")
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def nonzero_mask(t: torch.Tensor) -> torch.Tensor:
    """Entries whose bit pattern is not all zeros (so -0.0 and NaN count as values)."""
    if t.is_floating_point():
        return t.contiguous().view(_INT_VIEW[t.element_size()]) != 0
    return t != 0


def sparse_bytes(t: torch.Tensor, nnz: int) -> int:
    rows, cols = t.shape
    return nnz * t.element_size() + rows * ((cols + 7) // 8) + rows * 8 + 16


def encode(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dense 2-D tensor -> the four sparse-bitmask tensors (local names)."""
    t = t.detach().cpu().contiguous()
    mask = nonzero_mask(t)
    counts = mask.sum(dim=1)
    bitmask = torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))
    return {
        "compressed": t[mask].contiguous(),
        "bitmask": bitmask,
        "row_offsets": (torch.cumsum(counts, 0) - counts).to(torch.int64),
        "shape": torch.tensor(list(t.shape), dtype=torch.int64),
    }


def decode(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    shape = [int(x) for x in parts["shape"].tolist()]
    bits = np.unpackbits(parts["bitmask"].cpu().numpy(), axis=-1, count=shape[-1], bitorder="little")
    mask = torch.from_numpy(bits.reshape(shape).astype(bool))
    values = parts["compressed"]
    out = torch.zeros(shape, dtype=values.dtype)
    out[mask] = values
    return out


def decompress_state_(state: dict[str, torch.Tensor]) -> list[str]:
    """Replace every ``<name>.weight.{compressed,bitmask,row_offsets,shape}`` group by ``<name>.weight``.

    Returns the names of the modules restored."""
    names = sorted({k[: -len(".compressed")] for k in state if k.endswith(".weight.compressed")})
    for key in names:
        parts = {s: state.pop(f"{key}.{s}") for s in SUFFIXES}
        state[key] = decode(parts)
    return [k[: -len(".weight")] for k in names]


def _structure(model: nn.Module, names: list[str]) -> str:
    mods = dict(model.named_modules())
    for n in names:
        w = mods[n].weight
        rows, cols = w.shape
        if cols % 4 or bool(((w != 0).reshape(rows, cols // 4, 4).sum(dim=2) > 2).any()):
            return "unstructured"
    return "2:4"


class SparseBitmaskExporter:
    """Claims every dense ``nn.Linear`` weight that is smaller stored as a bitmask."""

    def export_(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        names: list[str] = []
        zeros = total = 0
        for name, mod in model.named_modules():
            key = f"{name}.weight"
            if not isinstance(mod, nn.Linear) or key not in state or quantized_of(mod) is not None:
                continue
            t = state[key]
            nnz = int(nonzero_mask(t).sum())
            if t.ndim != 2 or sparse_bytes(t, nnz) >= t.numel() * t.element_size():
                continue
            del state[key]
            state.update({f"{key}.{s}": v for s, v in encode(t).items()})
            names.append(name)
            zeros += t.numel() - nnz
            total += t.numel()
        if not names:
            return
        qc = config.setdefault("quantization_config", {"quant_method": "compressed-tensors", "format": "dense",
                                                       "quantization_status": "compressed", "ignore": []})
        qc["sparsity_config"] = {
            "format": "sparse-bitmask",
            "global_sparsity": round(zeros / total, 6),
            "sparsity_structure": _structure(model, names),
            "targets": ["re:^(" + "|".join(re.escape(n) for n in names) + ")$"],
            "ignore": [],
        }
