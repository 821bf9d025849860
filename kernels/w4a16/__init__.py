"""Weight-only quantized matmul (W4A16 / W8A16) on compressed-tensors' pack-quantized layout.

``w4a16_matmul`` picks, for CUDA tensors: the tensor-core kernel (``mma.cu``; 4-bit, group size a
multiple of 64 or channel-wise, bf16, 1..16 rows; needs ``nvcc`` once to build), else the Triton
kernels (4 or 8 bits, group size a multiple of 16 or channel-wise), else the pure-torch
reference. Importing this package never needs CUDA, nvcc or Triton.
"""

from __future__ import annotations

from typing import Any

import torch

from presso.kernels.support import triton_available
from presso.kernels.w4a16.reference import dequantize, pack_int, unpack_int, w4a16_matmul_ref

__all__ = [
    "dequantize",
    "pack_int",
    "prepare_weight",
    "triton_available",
    "unpack_int",
    "w4a16_matmul",
    "w4a16_matmul_ref",
]

_prepared: dict[tuple[str, int], tuple[Any, int, Any]] = {}


def _triton_module():
    from presso.kernels.w4a16 import triton as tk

    return tk


def prepare_weight(packed, scale, zero_point, bits: int, group_size: int | None, k: int):
    """Repack a CUDA weight once for the Triton kernels (returns a ``PreparedWeight``)."""
    return _triton_module().prepare_weight(packed, scale, zero_point, bits, group_size, k)


def _cached_prepare(kind, packed, scale, zero_point, bits, group_size, k):
    """Repack once per (kernel kind, packed tensor object, tensor version)."""
    import weakref

    key = (kind, id(packed))
    hit = _prepared.get(key)
    if hit is not None and hit[0]() is packed and hit[1] == packed._version:
        return hit[2]
    if kind == "mma":
        from presso.kernels.w4a16 import mma

        pw = mma.prepare(packed, scale, zero_point, group_size, k)
    else:
        pw = prepare_weight(packed, scale, zero_point, bits, group_size, k)
    _prepared[key] = (weakref.ref(packed, lambda _r, key=key: _prepared.pop(key, None)),  # type: ignore[misc]
                      packed._version, pw)
    return pw


def _use_mma(x: torch.Tensor, bits: int, group_size: int | None, k: int, n_groups: int) -> bool:
    from presso.kernels.w4a16 import mma

    rows = x.numel() // max(k, 1)
    return (x.dtype == torch.bfloat16 and 1 <= rows <= mma.DISPATCH_MAX_BATCH
            and mma.supports(bits, group_size, k, n_groups) and mma.available())


def w4a16_matmul(
    x: torch.Tensor,
    packed: Any,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
    bits: int = 4,
    group_size: int | None = 128,
) -> torch.Tensor:
    """``y = x @ W.T`` for a packed weight; ``x``: ``[..., K]`` -> ``[..., N]`` in x's dtype.

    ``packed`` is compressed-tensors' ``weight_packed`` (int32), a ``PreparedWeight`` (Triton) or
    an ``mma.MMAWeight``. A raw CUDA weight is repacked on first use and cached (keyed on the
    tensor object)."""
    if not isinstance(packed, torch.Tensor):
        from presso.kernels.w4a16 import mma

        if isinstance(packed, mma.MMAWeight):
            return mma.matmul(x, packed)
        return _triton_module().w4a16_matmul_prepared(x, packed)
    if scale is None:
        raise ValueError("scale is required with a raw packed weight")
    k = x.shape[-1]
    n_groups = scale.shape[1] if scale.dim() == 2 else 1
    if x.is_cuda and _use_mma(x, bits, group_size, k, n_groups):
        from presso.kernels.w4a16 import mma

        return mma.matmul(x, _cached_prepare("mma", packed, scale, zero_point, bits, group_size, k))
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and triton_available():
        tk = _triton_module()
        if tk.supports(bits, group_size, k, n_groups):
            pw = _cached_prepare("triton", packed, scale, zero_point, bits, group_size, k)
            return tk.w4a16_matmul_prepared(x, pw)
    return w4a16_matmul_ref(x, packed, scale, zero_point, bits, group_size)
