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
    """[n, kp] unsigned codes (int32, kp a multiple of 32) -> int32 words [n, kp*bits/32].

    Every 32 values fill exactly ``bits`` words; value ``i`` of a run lands at bit ``i*bits`` of
    the run, i.e. word ``i*bits // 32`` at offset ``i*bits % 32``, its high bits spilling into
    the next word when it straddles (int32 shifts drop the bits above 31, which is the spill).
    32 vectorized shift/ORs, on whatever device ``u`` is on.
    """
    n, kp = u.shape
    runs = u.view(n, kp // 32, 32)
    words = torch.zeros(n, kp // 32, bits, dtype=torch.int32, device=u.device)
    for i in range(32):
        word, off = divmod(i * bits, 32)
        v = runs[:, :, i]
        words[:, :, word] |= v << off
        if off + bits > 32:
            words[:, :, word + 1] |= v >> (32 - off)
    return words.view(n, kp // 32 * bits)


def pack_int(q: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 codes [N, K] in the signed range -> int32 [N, ceil(K*bits/32)] (on ``q``'s device)."""
    if q.dtype != torch.int8:
        raise TypeError("codes must be int8")
    n, k = q.shape
    kp = math.ceil(k / 32) * 32
    out = []
    for i in range(0, max(n, 1), _ROWS_PER_CHUNK):
        u = q[i : i + _ROWS_PER_CHUNK].to(torch.int32) + (1 << (bits - 1))
        if kp > k:
            u = torch.nn.functional.pad(u, (0, kp - k))
        out.append(_pack_rows(u, bits))
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
