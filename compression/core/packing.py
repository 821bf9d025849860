"""Dense bit packing of integer codes into int32 words (the compressed-tensors pack-quantized layout).

Along the packed dimension, element ``i`` (offset to unsigned by ``2^(b-1)``) occupies bits
``[i*b, (i+1)*b)`` of a little-endian bit stream cut into 32-bit words; rows are padded to a
multiple of 32 elements and the word count is ``ceil(K*b/32)``.
"""

from __future__ import annotations

import math

import torch

_ROWS_PER_CHUNK = 1024


def packed_words(k: int, bits: int) -> int:
    return math.ceil(k * bits / 32)


def _pack_rows(u: torch.Tensor, bits: int) -> torch.Tensor:
    n, kp = u.shape
    shifts = torch.arange(bits, dtype=torch.int64)
    bitplane = ((u.unsqueeze(-1) >> shifts) & 1).reshape(n, kp * bits // 32, 32)
    weights = torch.ones(32, dtype=torch.int64) << torch.arange(32, dtype=torch.int64)
    words = (bitplane * weights).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def pack_int(q: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 codes [N, K] in the signed range -> int32 [N, ceil(K*bits/32)]."""
    if q.dtype != torch.int8:
        raise TypeError("codes must be int8")
    n, k = q.shape
    u = q.to(torch.int64) + (1 << (bits - 1))
    kp = math.ceil(k / 32) * 32
    if kp > k:
        u = torch.nn.functional.pad(u, (0, kp - k))
    out = [_pack_rows(u[i : i + _ROWS_PER_CHUNK], bits) for i in range(0, max(n, 1), _ROWS_PER_CHUNK)]
    return torch.cat(out)[:, : packed_words(k, bits)].contiguous()


def unpack_int(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_int`: int32 [N, W] -> int8 codes [N, k]."""
    n = packed.shape[0]
    kp = math.ceil(k / 32) * 32
    words = packed.to(torch.int64) & 0xFFFFFFFF
    full = kp * bits // 32
    if words.shape[1] < full:
        words = torch.nn.functional.pad(words, (0, full - words.shape[1]))
    bit_stream = (words.unsqueeze(-1) >> torch.arange(32, dtype=torch.int64)) & 1  # [N, W, 32]
    bit_stream = bit_stream.reshape(n, kp, bits)
    vals = (bit_stream << torch.arange(bits, dtype=torch.int64)).sum(-1)
    return (vals[:, :k] - (1 << (bits - 1))).to(torch.int8)


def pack_zero_points(zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Zero points [N, G] are packed along dim 0 (compressed-tensors convention)."""
    return pack_int(zero.t().contiguous(), bits).t().contiguous()


def unpack_zero_points(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    return unpack_int(packed.t().contiguous(), bits, n).t().contiguous()
