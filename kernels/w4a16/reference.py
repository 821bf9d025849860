"""Pure-torch reference for weight-only quantized matmul on the compressed-tensors
"pack-quantized" layout (W4A16 / W8A16 and any width 1..8).

Layout (compressed-tensors >= 0.13, identical to the older word-aligned layout for
2, 4 and 8 bits):

* ``weight_packed``: int32 ``[N, ceil(K * bits / 32)]``. Along each output row the
  quantized values are stored offset to unsigned (``q + 2**(bits-1)``) as one dense
  little-endian bit stream: value ``k`` occupies bits ``k*bits .. k*bits+bits-1`` of the
  row (so for 4 bits, word ``w`` holds ``k = 8w .. 8w+7``, value ``8w+j`` in bits
  ``4j..4j+3``).
* ``weight_scale``: ``[N, G]`` with ``G = ceil(K / group_size)``; value ``k`` uses
  group ``k // group_size``. The last group may be shorter than ``group_size``
  (ragged). Channel-wise quantization is ``G == 1``.
* ``weight_zero_point`` (asymmetric only): signed values ``[N, G]``, stored packed
  along the *output* dimension (int32 ``[ceil(N * bits / 32), G]``); both forms are
  accepted here.
* Dequantization: ``W[n, k] = (q[n, k] - z[n, g]) * s[n, g]`` with ``q`` signed.

``planar_repack`` builds the kernel-side layout used by ``presso.kernels.w4a16.triton`` and
``planar_unpack`` inverts it (the CPU tests check both).
"""

from __future__ import annotations

import sys

import torch

PLANAR_ROWS = 16  # words per planar block along K (one 16-wide K slice per value slot)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")


def _unsigned_words(packed: torch.Tensor) -> torch.Tensor:
    if packed.dtype != torch.int32:
        raise ValueError(f"packed weights must be int32, got {packed.dtype}")
    return packed.to(torch.int64) & 0xFFFFFFFF


def unpack_int(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Unpack ``[N, ceil(k*bits/32)]`` int32 words to signed int8 values ``[N, k]``."""
    _check_bits(bits)
    if packed.dim() != 2:
        raise ValueError("packed must be 2-D [N, words]")
    n, n_words = packed.shape
    if n_words * 32 < k * bits:
        raise ValueError(f"{n_words} words cannot hold {k} values of {bits} bits")
    offset = 1 << (bits - 1)
    if bits in (4, 8) and sys.byteorder == "little":
        raw = packed.contiguous().view(torch.uint8).view(n, n_words * 4)
        if bits == 4:
            raw = torch.stack((raw & 0xF, raw >> 4), dim=-1).view(n, n_words * 8)
        return (raw[:, :k].to(torch.int16) - offset).to(torch.int8)
    words = _unsigned_words(packed)
    pos = torch.arange(k, device=packed.device, dtype=torch.int64) * bits
    widx = pos // 32
    shift = pos % 32
    lo = words[:, widx] >> shift
    nxt = torch.clamp(widx + 1, max=n_words - 1)
    hi = torch.where(shift + bits > 32, words[:, nxt] << (32 - shift), torch.zeros_like(lo))
    vals = (lo | hi) & ((1 << bits) - 1)
    return (vals - offset).to(torch.int8)


def pack_int(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of ``unpack_int``: signed ``[N, K]`` values -> int32 ``[N, ceil(K*bits/32)]``."""
    _check_bits(bits)
    n, k = values.shape
    offset = 1 << (bits - 1)
    u = values.to(torch.int64) + offset
    if bool(((u < 0) | (u >= (1 << bits))).any()):
        raise ValueError(f"values out of range for {bits} bits")
    n_words = (k * bits + 31) // 32
    pos = torch.arange(k, device=values.device, dtype=torch.int64) * bits
    widx = pos // 32
    shift = pos % 32
    out = torch.zeros(n, n_words + 1, dtype=torch.int64, device=values.device)
    out.index_add_(1, widx, (u << shift) & 0xFFFFFFFF)
    spill = shift + bits > 32
    if bool(spill.any()):
        out.index_add_(1, widx[spill] + 1, u[:, spill] >> (32 - shift[spill]))
    return _to_int32(out[:, :n_words])


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    words = words & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def zero_point_values(zero_point: torch.Tensor | None, bits: int, n: int) -> torch.Tensor | None:
    """Signed zero points ``[N, G]`` as float32, from the packed (int32 along dim 0) or plain form."""
    if zero_point is None:
        return None
    if zero_point.dim() == 1:
        zero_point = zero_point[:, None]
    if zero_point.dtype == torch.int32 and zero_point.shape[0] != n:
        zero_point = unpack_int(zero_point.t().contiguous(), bits, n).t()
    return zero_point.to(torch.float32)


def group_index(k: int, group_size: int | None, n_groups: int, device: torch.device) -> torch.Tensor:
    """Column -> scale column (``k // group_size``; channel-wise when ``n_groups == 1``)."""
    if n_groups == 1 or group_size is None or group_size <= 0:
        return torch.zeros(k, dtype=torch.long, device=device)
    idx = torch.arange(k, device=device) // group_size
    if int(idx[-1]) >= n_groups:
        raise ValueError(f"scale has {n_groups} groups, K={k} with group_size={group_size} needs more")
    return idx


def dequantize(
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    bits: int,
    group_size: int | None,
    k: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``W[n, k] = (q - z) * s`` as ``[N, K]`` in ``dtype`` (default: the scale's dtype)."""
    q = unpack_int(packed, bits, k).to(torch.float32)
    if scale.dim() == 1:
        scale = scale[:, None]
    idx = group_index(k, group_size, scale.shape[1], packed.device)
    zp = zero_point_values(zero_point, bits, q.shape[0])
    if zp is not None:
        q = q - zp[:, idx]
    w = q * scale.to(torch.float32)[:, idx]
    return w.to(dtype or scale.dtype)


def w4a16_matmul_ref(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    bits: int = 4,
    group_size: int | None = 128,
) -> torch.Tensor:
    """``y = x @ W.T`` with W dequantized to x's dtype (as a decompressed model holds it),
    accumulated in float32 and returned in x's dtype. ``x``: ``[..., K]`` -> ``[..., N]``."""
    k = x.shape[-1]
    w = dequantize(packed, scale, zero_point, bits, group_size, k, dtype=x.dtype)
    y = x.reshape(-1, k).to(torch.float32) @ w.to(torch.float32).t()
    return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])


# --- kernel-side layout -------------------------------------------------------------


def planar_block(bits: int) -> int:
    """Values of K per planar block: 16 words x (32 // bits) values."""
    return PLANAR_ROWS * (32 // bits)


def planar_repack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Repack compressed-tensors words into the kernels' planar layout.

    K is padded to a multiple of ``B = planar_block(bits)`` (with the value 0). Within each
    block of B values, word ``r`` (0..15) holds at slot ``j`` (bits ``j*bits..``) the value
    at ``k = block*B + j*16 + r``: slot ``j`` of a 16-word tile is then the contiguous K
    slice ``[j*16, j*16+16)``, so one mask/shift gives a ready [rows, 16] tile for a dot.
    Only 2/4/8 bits (whole values per word). Returns int32 ``[N, Kpad // (32 // bits)]``.
    """
    if bits not in (2, 4, 8):
        raise ValueError("planar layout needs bits in (2, 4, 8)")
    vpw = 32 // bits
    blk = planar_block(bits)
    n = packed.shape[0]
    u = unpack_int(packed, bits, k).to(torch.int64) + (1 << (bits - 1))
    kp = -(-k // blk) * blk
    if kp != k:
        pad = torch.full((n, kp - k), 1 << (bits - 1), dtype=torch.int64, device=u.device)
        u = torch.cat([u, pad], dim=1)
    u = u.view(n, kp // blk, vpw, PLANAR_ROWS).transpose(2, 3)  # [n, blocks, r, j]
    shifts = torch.arange(vpw, device=u.device, dtype=torch.int64) * bits
    words = (u << shifts).sum(dim=-1)
    return _to_int32(words.reshape(n, kp // vpw)).contiguous()


def planar_unpack(planar: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of ``planar_repack``: signed int8 ``[N, k]``."""
    vpw = 32 // bits
    n, n_words = planar.shape
    words = _unsigned_words(planar).view(n, n_words // PLANAR_ROWS, PLANAR_ROWS, 1)
    shifts = torch.arange(vpw, device=planar.device, dtype=torch.int64) * bits
    u = (words >> shifts) & ((1 << bits) - 1)  # [n, blocks, r, j]
    u = u.transpose(2, 3).reshape(n, -1)[:, :k]
    return (u - (1 << (bits - 1))).to(torch.int8)


# --- tensor-core layout (kernels/w4a16/mma.cu) ---------------------------------------

MMA_ROWS = 16  # output rows per stripe (the m of an m16n8k16 tile)
MMA_CHUNK = 64  # K values per chunk (4 tiles of 16); a lane's uint4 covers one chunk


def _mma_view(n: int, kp: int) -> tuple[int, ...]:
    # rows r = rh*8 + g; chunk-local k = 16t + 4i + 2h + e (lane t, tile i, register half h, element e)
    return (n // MMA_ROWS, 2, 8, kp // MMA_CHUNK, 4, 4, 2, 2)


# permute the view above to [stripe, chunk, g, t, i, rh, h, e]
_MMA_ORDER = (0, 3, 2, 4, 5, 1, 6, 7)


def _mma_shifts(device: torch.device) -> torch.Tensor:
    """Bit position of (rh, h, e) in a word: register j = rh + 2h at bits 4j, element e in the high half."""
    rh = torch.arange(2, device=device).view(2, 1, 1)
    h = torch.arange(2, device=device).view(1, 2, 1)
    e = torch.arange(2, device=device).view(1, 1, 2)
    return (4 * (rh + 2 * h) + 16 * e).to(torch.int64)


def mma_repack(packed: torch.Tensor, k: int) -> torch.Tensor:
    """4-bit compressed-tensors words -> the tensor-core kernel's layout, int32 ``[S, C, 32, 4]``.

    Rows are padded to a multiple of 16 (stripes, S) and K to a multiple of 64 (chunks, C), with
    the code 8 (q = 0). Word ``i`` of lane ``(g, t)`` (lane = 4g + t) in chunk ``c`` of stripe ``s``
    holds its m16n8k16 A fragment for tile ``i``: register ``a_j`` (j = rh + 2h: a0/a2 row g,
    a1/a3 row g + 8) is the pair of chunk-local K values ``16t + 4i + 2h + {0, 1}`` and sits at
    bits ``4j`` (first value) and ``16 + 4j`` (second), so ``(word >> 4j) & 0x000F000F`` is that
    register's pair. K is permuted inside each chunk (tile i's k-columns 2t.., 2t+8.. are the
    chunk's ``16t + 4i + ..``); the B fragment reads the activations with the same permutation.
    """
    n = packed.shape[0]
    u = unpack_int(packed, 4, k).to(torch.int64) + 8
    npad, kp = -(-n // MMA_ROWS) * MMA_ROWS, -(-k // MMA_CHUNK) * MMA_CHUNK
    u = torch.nn.functional.pad(u, (0, kp - k, 0, npad - n), value=8)
    u = u.view(_mma_view(npad, kp)).permute(_MMA_ORDER)
    words = (u << _mma_shifts(u.device)).sum(dim=(-3, -2, -1))  # [S, C, g, t, i]
    return _to_int32(words.reshape(npad // MMA_ROWS, kp // MMA_CHUNK, 32, 4)).contiguous()


def mma_unpack(words: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of ``mma_repack``: signed int8 ``[n, k]``."""
    s, c = words.shape[:2]
    w = _unsigned_words(words).view(s, c, 8, 4, 4, 1, 1, 1)
    u = (w >> _mma_shifts(words.device)) & 0xF  # [S, C, g, t, i, rh, h, e]
    inv = [_MMA_ORDER.index(d) for d in range(8)]
    u = u.permute(inv).reshape(s * MMA_ROWS, c * MMA_CHUNK)
    return (u[:n, :k] - 8).to(torch.int8)


def mma_pair_rows(t: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Per-row, per-group values ``[N, G]`` -> the tensor-core kernel's ``[S, G, 8, 2]``.

    Rows are padded to whole stripes of 16 with ``fill``; pair ``g`` of stripe ``s`` and group
    ``gi`` holds rows ``16s + g`` and ``16s + g + 8``: a lane ``(g, t)`` of the kernel reads the
    scales (or zero-point offsets) of both of its rows with one load.
    """
    n, groups = t.shape
    npad = -(-n // MMA_ROWS) * MMA_ROWS
    t = torch.nn.functional.pad(t, (0, 0, 0, npad - n), value=fill)
    return t.view(npad // MMA_ROWS, 2, 8, groups).permute(0, 3, 2, 1).contiguous()


def mma_unpair_rows(p: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``mma_pair_rows``: ``[n, G]``."""
    s, groups = p.shape[:2]
    return p.permute(0, 3, 2, 1).reshape(s * MMA_ROWS, groups)[:n]
