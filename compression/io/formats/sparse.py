"""sparse-bitmask (opt-in): sparse linears as compressed-tensors ``sparse-bitmask`` tensors.

Written only with ``output.sparse_format = "sparse-bitmask"``; by default sparse layers are stored dense
(plain ``<name>.weight``), which every loader reads.

Per weight ``<name>.weight`` [rows, cols] the artifact holds
``<name>.weight.compressed`` (the non-zero values, row-major, in the weight's dtype),
``<name>.weight.bitmask`` (uint8 [rows, ceil(cols/8)], numpy.packbits little bit order),
``<name>.weight.row_offsets`` (int64 [rows], index of each row's first value) and
``<name>.weight.shape`` (int64 [2]); config.json gets ``quantization_config.sparsity_config``
with format ``sparse-bitmask``, the layout of compressed-tensors' BitmaskCompressor.

* "Zero" means all bits zero, so -0.0 is stored as a value and the round trip is bit-exact.
* A layer is stored sparse only when that is smaller than dense: (1 - s) * bits + 1 bit per weight
  plus 8 bytes per row, i.e. above ~1/bits sparsity (6.3% for 16-bit, 3.1% for fp32 weights).
* Quantized modules are left to the pack-quantized format, which runs first and claims them:
  compressed-tensors has no sparse form of packed int4 weights that a loader reads (see
  docs/pruning.md), so sparse + quantized layers are stored packed.

Loading: compressed-tensors >= 0.15 dropped the sparse decompressors, and transformers 5.x loads such a
checkpoint with those layers MISSING (randomly initialized, a warning only). So the form is
``presso_only``: the artifact's config is marked and plain transformers refuses it
(formats.base.mark_presso_only); ``presso.load`` decodes it (:func:`decompress_state_`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch import nn

from presso.compression.core.layout import quantized_of
from presso.compression.core.staging import to_device, to_host
from presso.compression.io.formats.base import Format, LoadContext, WriteOptions
from presso.compression.io.formats.device import export_device

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


def packbits(mask: torch.Tensor) -> torch.Tensor:
    """bool [rows, cols] -> uint8 [rows, ceil(cols / 8)], little bit order (numpy.packbits'), on mask's device."""
    if mask.device.type == "cpu":  # numpy's packer is ~20x faster than the torch expression there
        return torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))
    return packbits_torch(mask)


def packbits_torch(mask: torch.Tensor) -> torch.Tensor:
    """``packbits`` as torch ops, for masks on a GPU."""
    rows, cols = mask.shape
    m = torch.nn.functional.pad(mask.to(torch.uint8), (0, (-cols) % 8)).view(rows, -1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (m * weights).sum(dim=-1, dtype=torch.uint8)


def encode(t: torch.Tensor, device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Dense 2-D tensor -> the four sparse-bitmask tensors (local names, in host memory).

    The work runs on ``device`` (default: where ``t`` is); the exporter passes the GPU when there is one."""
    src = _on(t, device)
    return _parts(src, nonzero_mask(src))


def _on(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    t = t.detach()
    return to_device(t, device) if device is not None and device != t.device else t.contiguous()


def _parts(src: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    counts = mask.sum(dim=1)
    return {
        "compressed": to_host(src[mask]),
        "bitmask": to_host(packbits(mask)),
        "row_offsets": to_host(torch.cumsum(counts, 0) - counts),
        "shape": torch.tensor(list(src.shape), dtype=torch.int64),
    }


def is_two_four(mask: torch.Tensor) -> bool:
    """At most 2 values in every aligned group of 4 along each row."""
    rows, cols = mask.shape
    return cols % 4 == 0 and not bool((mask.view(rows, cols // 4, 4).sum(dim=2) > 2).any())


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


class SparseBitmask(Format):
    """Claims every dense ``nn.Linear`` weight that is smaller stored as a bitmask (when opted in)."""

    name = "sparse-bitmask"
    loaders = ("presso.load",)
    presso_only = True
    reads_quantization_config = True

    def export(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any],
               options: WriteOptions) -> bool:
        if options.sparse_format != "sparse-bitmask":
            return False
        names: list[str] = []
        zeros = total = 0
        two_four = True
        device = export_device()
        for name, mod in model.named_modules():
            key = f"{name}.weight"
            if not isinstance(mod, nn.Linear) or key not in state or quantized_of(mod) is not None:
                continue
            t = state[key]
            if t.ndim != 2:
                continue
            src = _on(t, device)
            mask = nonzero_mask(src)  # one mask per layer: size decision, parts and structure
            nnz = int(mask.sum())
            if sparse_bytes(t, nnz) >= t.numel() * t.element_size():
                continue
            del state[key]
            state.update({f"{key}.{s}": v for s, v in _parts(src, mask).items()})
            two_four = two_four and is_two_four(mask)
            names.append(name)
            zeros += t.numel() - nnz
            total += t.numel()
        if not names:
            return False
        qc = config.setdefault("quantization_config", {"quant_method": "compressed-tensors", "format": "dense",
                                                       "quantization_status": "compressed", "ignore": []})
        qc["sparsity_config"] = {
            "format": "sparse-bitmask",
            "global_sparsity": round(zeros / total, 6),
            "sparsity_structure": "2:4" if two_four else "unstructured",
            "targets": ["re:^(" + "|".join(re.escape(n) for n in names) + ")$"],
            "ignore": [],
        }
        return True

    def present(self, ctx: LoadContext) -> bool:
        return (ctx.qcfg.get("sparsity_config") or {}).get("format") == "sparse-bitmask"

    def load(self, model: nn.Module, state: dict[str, torch.Tensor], ctx: LoadContext) -> None:
        decompress_state_(state)
