"""Triton kernels for W4A16 / W8A16 matmul: ``y = x @ W.T`` with W packed (see reference.py).

Import only where Triton is installed (``presso.kernels.w4a16`` guards it).

Weights are repacked once (``prepare_weight``) into the *planar* layout of
``reference.planar_repack``: same shape as compressed-tensors' ``[N, K*bits/32]`` int32,
but inside each 16-word block along K, value slot ``j`` of word ``r`` holds
``k = j*16 + r``. A ``[rows, 16]`` tile of words then yields, per slot ``j``, a ready
``[rows, 16]`` tile of consecutive K values with one AND (slots whose bits sit above
bit 19 take one shared ``>> 16`` of the word first).

Dequantization avoids int->float conversions: ``(word & mask) | 0x3F800000`` read as
float32 is ``1 + q * 2**(p-23)`` exactly (p = the slot's bit offset), so ``v - c`` gives
``(q - offset - z) * 2**(p-23)`` exactly, and the power of two is folded into the
activation (GEMV) or the scale (GEMM).

* ``_gemv_kernel`` (M == 1): CUDA-core FMAs in float32 on ``[BN, 16]`` tiles, the group
  scale applied once per block to a per-block accumulator; split-K over blocks.
* ``_gemm_kernel`` (M >= 2): swap-AB tensor-core dots ``acc[BN, BM] += W_j[BN,16] @
  x_j^T[16, BM]`` with the scale applied while dequantizing to bf16; split-K.

Split-K reduction happens inside the same launch: each program writes its float32
partial, takes a ticket with an atomic counter, and the last program of a tile sums the
partials in split order (deterministic), writes the output and resets the counter. One
launch per matmul; the counters live in a per-device buffer, so concurrent matmuls on
different streams of one device are not supported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from presso.kernels.support import tensor_bytes
from presso.kernels.w4a16 import reference as ref

_LOCK_SLOTS = 1 << 16
_locks: dict[torch.device, torch.Tensor] = {}


@dataclass(frozen=True)
class PreparedWeight:
    """A weight repacked for the kernels (make it once, at load time)."""

    qweight: torch.Tensor  # int32 [N, Kpad // (32 // bits)], planar layout
    scale: torch.Tensor  # [N, G] contiguous, original dtype
    zero: torch.Tensor | None  # float32 [N, G] signed zero points, or None
    bits: int
    group_size: int  # effective: a multiple of 16 (channel-wise: Kpad)
    k: int

    @property
    def n(self) -> int:
        return int(self.qweight.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes the kernel reads for the weight (packed words + scales + zero points)."""
        return tensor_bytes(self.qweight, self.scale, self.zero)


def supports(bits: int, group_size: int | None, k: int, n_groups: int | None = None) -> bool:
    """Whether the fast path handles this format (else callers use the reference)."""
    if bits not in (4, 8):
        return False
    if n_groups == 1 or group_size is None or group_size <= 0 or group_size >= k:
        return True
    return group_size % 16 == 0


def prepare_weight(
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    bits: int,
    group_size: int | None,
    k: int,
) -> PreparedWeight:
    if scale.dim() == 1:
        scale = scale[:, None]
    n_groups = scale.shape[1]
    if not supports(bits, group_size, k, n_groups):
        raise ValueError(f"unsupported format for the Triton path: bits={bits} group_size={group_size}")
    qweight = ref.planar_repack(packed, bits, k)
    kp = qweight.shape[1] * (32 // bits)
    if n_groups == 1 or group_size is None or group_size <= 0 or group_size >= k:
        gs = kp
    else:
        gs = int(group_size)
        ref.group_index(k, gs, n_groups, packed.device)  # validates the scale's width
    zero = ref.zero_point_values(zero_point, bits, packed.shape[0])
    return PreparedWeight(
        qweight=qweight,
        scale=scale.contiguous(),
        zero=None if zero is None else zero.contiguous(),
        bits=bits,
        group_size=gs,
        k=k,
    )


def _lock_buffer(device: torch.device) -> torch.Tensor:
    buf = _locks.get(device)
    if buf is None:
        buf = torch.zeros(_LOCK_SLOTS, dtype=torch.int32, device=device)
        _locks[device] = buf
    return buf


# --- device code -------------------------------------------------------------------


@triton.jit
def _slot(w, t, z, magic, j: tl.constexpr, BITS: tl.constexpr, HAS_ZP: tl.constexpr):
    """Value slot j of each word, dequantized up to a power of two: ``(q - z) * 2**(p-23)``.

    ``(bits & mask) | 0x3F800000`` read as float32 is ``1 + u * 2**(p-23)`` exactly (u the
    unsigned value at bit offset p), so no int->float conversion is needed. Slots whose
    bits end above bit 23 are read from ``t = w >> 16``. ``magic`` is 0x3F800000 passed as a
    kernel argument: held in a register, the AND and OR fuse into one LOP3 (a folded
    constant would need a second instruction)."""
    USE_T: tl.constexpr = (BITS * j + BITS) // 24
    PP: tl.constexpr = BITS * j - 16 * USE_T
    R: tl.constexpr = 1 << (23 - PP)
    OFF: tl.constexpr = 1 << (BITS - 1)
    MASK: tl.constexpr = ((1 << BITS) - 1) << PP
    if USE_T:
        v = ((t & MASK) | magic).to(tl.float32, bitcast=True)
    else:
        v = ((w & MASK) | magic).to(tl.float32, bitcast=True)
    if HAS_ZP:
        d = v - (1.0 + (OFF + z) / R)
    else:
        d = v - (1.0 + OFF / R)
    return d


@triton.jit
def _slot_pow(a, j: tl.constexpr, BITS: tl.constexpr):
    """``a * 2**(23-p)`` for slot j: undoes _slot's power of two (applied to x or the scale)."""
    USE_T: tl.constexpr = (BITS * j + BITS) // 24
    PP: tl.constexpr = BITS * j - 16 * USE_T
    R: tl.constexpr = 1 << (23 - PP)
    return a * R


@triton.jit
def _finish(part, y_ptrs, p_ptrs, p_stride, mask, lock_ptr, n_split):
    """Write ``part`` to y, or reduce split-K partials in the last program of the tile."""
    if n_split == 1:
        tl.store(y_ptrs, part.to(y_ptrs.dtype.element_ty), mask=mask)
    else:
        pid_k = tl.program_id(2)
        tl.store(p_ptrs + pid_k * p_stride, part, mask=mask)
        tl.debug_barrier()
        ticket = tl.atomic_add(lock_ptr, 1)
        if ticket == n_split - 1:
            tot = tl.load(p_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
            for s in range(1, n_split):
                tot += tl.load(p_ptrs + s * p_stride, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptrs, tot.to(y_ptrs.dtype.element_ty), mask=mask)
            tl.atomic_xchg(lock_ptr, 0)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, part_ptr, lock_ptr,
    N, K, KW, G, GS, n_blocks, magic,
    BITS: tl.constexpr, HAS_ZP: tl.constexpr, PER_BLOCK: tl.constexpr,
    BN: tl.constexpr, KB: tl.constexpr,
):  # fmt: skip
    VPW: tl.constexpr = 32 // BITS
    BLK: tl.constexpr = 16 * VPW
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(2)
    n_split = tl.cdiv(n_blocks, KB)
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_mask = offs_n < N
    offs_r = tl.arange(0, 16)
    w_ptrs = w_ptr + offs_n[:, None] * KW + offs_r[None, :]
    acc = tl.zeros([BN, 16], dtype=tl.float32)
    for bi in range(KB):
        b = pid_k * KB + bi
        ok = b < n_blocks
        w = tl.load(w_ptrs + b * 16, mask=n_mask[:, None] & ok, other=0)
        t = w >> 16
        kb = b * BLK
        if PER_BLOCK:
            g = tl.minimum(kb // GS, G - 1)
            s = tl.load(s_ptr + offs_n * G + g, mask=n_mask, other=0.0).to(tl.float32)
            z = s
            if HAS_ZP:
                z = tl.load(z_ptr + offs_n * G + g, mask=n_mask, other=0.0)
            gacc = tl.zeros([BN, 16], dtype=tl.float32)
        for j in tl.static_range(VPW):
            kk = kb + j * 16 + offs_r
            xj = _slot_pow(tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32), j, BITS)
            if not PER_BLOCK:
                g = tl.minimum((kb + j * 16) // GS, G - 1)
                s = tl.load(s_ptr + offs_n * G + g, mask=n_mask, other=0.0).to(tl.float32)
                z = s
                if HAS_ZP:
                    z = tl.load(z_ptr + offs_n * G + g, mask=n_mask, other=0.0)
            d = _slot(w, t, z[:, None], magic, j, BITS, HAS_ZP)
            if PER_BLOCK:
                gacc += d * xj[None, :]
            else:
                acc += (d * xj[None, :]) * s[:, None]
        if PER_BLOCK:
            acc += gacc * s[:, None]
    part = tl.sum(acc, axis=1)
    _finish(part, y_ptr + offs_n, part_ptr + offs_n, N, n_mask, lock_ptr + pid_n, n_split)


@triton.jit
def _top_slot(w, magic, j: tl.constexpr, BITS: tl.constexpr):
    """Value slot j as float32 ``1 + u * 2**(P-23)`` with P = 15 or 19: the slot is shifted
    near the top of the mantissa (one shift serves two 4-bit slots), so that ``v * x'``
    with ``x' = x * 2**(23-P)`` is exactly ``x' + u * x`` (``_top_pow`` gives x')."""
    VPS: tl.constexpr = 8 // BITS if BITS < 8 else 1
    P: tl.constexpr = 15 + BITS * (j % VPS)
    SH: tl.constexpr = 15 - BITS * VPS * (j // VPS)
    MASK: tl.constexpr = ((1 << BITS) - 1) << P
    if SH >= 0:
        src = w << SH
    else:
        src = w >> (-SH)
    return ((src & MASK) | magic).to(tl.float32, bitcast=True)


@triton.jit
def _top_pow(a, j: tl.constexpr, BITS: tl.constexpr):
    VPS: tl.constexpr = 8 // BITS if BITS < 8 else 1
    P: tl.constexpr = 15 + BITS * (j % VPS)
    R: tl.constexpr = 1 << (23 - P)
    return a * R


@triton.jit
def _gemv_wide_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, part_ptr, lock_ptr,
    N, K, KW, G, GS, n_blocks, magic,
    BITS: tl.constexpr, HAS_ZP: tl.constexpr, PER_BLOCK: tl.constexpr,
    BN: tl.constexpr, KB: tl.constexpr,
):  # fmt: skip
    """GEMV over a ``[KB, BN, 16]`` word tile (KB 16-word blocks along K, BN rows) loaded
    whole before the first FMA: threads spread along K, each holds its words of all BN
    rows, so every activation it loads and converts serves BN rows.

    Per value: a shared shift, one LOP3 and one FFMA (``acc += v * x'``); the offset
    ``sum(x') + (2**(bits-1) + z) * sum(x)`` depends on x only (and z per row) and is
    subtracted once per block."""
    VPW: tl.constexpr = 32 // BITS
    BLK: tl.constexpr = 16 * VPW
    OFF: tl.constexpr = 1 << (BITS - 1)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(2)
    n_split = tl.cdiv(n_blocks, KB)
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_mask = offs_n < N
    offs_b = pid_k * KB + tl.arange(0, KB)
    b_mask = offs_b < n_blocks
    offs_r = tl.arange(0, 16)
    w_ptrs = w_ptr + (offs_b * 16)[:, None, None] + offs_n[None, :, None] * KW + offs_r[None, None, :]
    w = tl.load(w_ptrs, mask=b_mask[:, None, None] & n_mask[None, :, None], other=0)
    sz_mask = b_mask[:, None] & n_mask[None, :]
    if PER_BLOCK:
        g = tl.minimum(offs_b * BLK // GS, G - 1)
        s = tl.load(s_ptr + offs_n[None, :] * G + g[:, None], mask=sz_mask, other=0.0).to(tl.float32)
        if HAS_ZP:
            z = tl.load(z_ptr + offs_n[None, :] * G + g[:, None], mask=sz_mask, other=0.0)
    acc = tl.zeros([KB, BN, 16], dtype=tl.float32)
    c1 = tl.zeros([KB, 16], dtype=tl.float32)
    c0 = tl.zeros([KB, 16], dtype=tl.float32)
    for j in tl.static_range(VPW):
        kk = (offs_b * BLK + j * 16)[:, None] + offs_r[None, :]
        xj = tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
        xs = _top_pow(xj, j, BITS)
        v = _top_slot(w, magic, j, BITS)
        if PER_BLOCK:
            acc += v * xs[:, None, :]
            c1 += xs + OFF * xj
            if HAS_ZP:
                c0 += xj
        else:
            g = tl.minimum((offs_b * BLK + j * 16) // GS, G - 1)
            s = tl.load(s_ptr + offs_n[None, :] * G + g[:, None], mask=sz_mask, other=0.0).to(tl.float32)
            prod = v * xs[:, None, :] - (xs + OFF * xj)[:, None, :]
            if HAS_ZP:
                z = tl.load(z_ptr + offs_n[None, :] * G + g[:, None], mask=sz_mask, other=0.0)
                prod -= z[:, :, None] * xj[:, None, :]
            acc += prod * s[:, :, None]
    if PER_BLOCK:
        acc = acc - c1[:, None, :]
        if HAS_ZP:
            acc -= z[:, :, None] * c0[:, None, :]
        acc = acc * s[:, :, None]
    part = tl.sum(tl.sum(acc, axis=2), axis=0)
    _finish(part, y_ptr + offs_n, part_ptr + offs_n, N, n_mask, lock_ptr + pid_n, n_split)


@triton.jit
def _gemm_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, part_ptr, lock_ptr,
    M, N, K, KW, G, GS, n_blocks, stride_xm, magic,
    BITS: tl.constexpr, HAS_ZP: tl.constexpr, PER_BLOCK: tl.constexpr,
    BN: tl.constexpr, BM: tl.constexpr, KB: tl.constexpr,
):  # fmt: skip
    VPW: tl.constexpr = 32 // BITS
    BLK: tl.constexpr = 16 * VPW
    dt = x_ptr.dtype.element_ty
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    n_split = tl.cdiv(n_blocks, KB)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_m = pid_m * BM + tl.arange(0, BM)
    n_mask = offs_n < N
    m_mask = offs_m < M
    offs_r = tl.arange(0, 16)
    w_ptrs = w_ptr + offs_n[:, None] * KW + offs_r[None, :]
    x_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_r[:, None]
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    for bi in range(KB):
        b = pid_k * KB + bi
        ok = b < n_blocks
        w = tl.load(w_ptrs + b * 16, mask=n_mask[:, None] & ok, other=0)
        t = w >> 16
        kb = b * BLK
        if PER_BLOCK:
            g = tl.minimum(kb // GS, G - 1)
            s = tl.load(s_ptr + offs_n * G + g, mask=n_mask, other=0.0).to(tl.float32)
            z = s
            if HAS_ZP:
                z = tl.load(z_ptr + offs_n * G + g, mask=n_mask, other=0.0)
        for j in tl.static_range(VPW):
            kk = kb + j * 16 + offs_r
            xj = tl.load(x_ptrs + kb + j * 16, mask=(kk < K)[:, None] & m_mask[None, :], other=0.0)
            if not PER_BLOCK:
                g = tl.minimum((kb + j * 16) // GS, G - 1)
                s = tl.load(s_ptr + offs_n * G + g, mask=n_mask, other=0.0).to(tl.float32)
                z = s
                if HAS_ZP:
                    z = tl.load(z_ptr + offs_n * G + g, mask=n_mask, other=0.0)
            d = _slot(w, t, z[:, None], magic, j, BITS, HAS_ZP)
            wj = (d * _slot_pow(s, j, BITS)[:, None]).to(dt)
            acc = tl.dot(wj, xj, acc)
    y_ptrs = y_ptr + offs_m[None, :] * N + offs_n[:, None]
    p_ptrs = part_ptr + offs_m[None, :] * N + offs_n[:, None]
    mask = n_mask[:, None] & m_mask[None, :]
    lock = lock_ptr + pid_n * tl.cdiv(M, BM) + pid_m
    _finish(acc, y_ptrs, p_ptrs, M * N, mask, lock, n_split)


# --- launch configs ----------------------------------------------------------------

GEMV_CONFIGS = [
    triton.Config({"BN": 128, "KB": 2}, num_warps=4),
    triton.Config({"BN": 128, "KB": 4}, num_warps=4),
    triton.Config({"BN": 256, "KB": 1}, num_warps=4),
    triton.Config({"BN": 256, "KB": 2}, num_warps=4),
    triton.Config({"BN": 256, "KB": 2}, num_warps=8),
    triton.Config({"BN": 64, "KB": 4}, num_warps=2),
    triton.Config({"BN": 128, "KB": 1}, num_warps=4),
    triton.Config({"BN": 512, "KB": 1}, num_warps=8),
]
GEMV_DEFAULT = GEMV_CONFIGS[3]
WIDE_CONFIGS = [
    triton.Config({"BN": 8, "KB": 32}, num_warps=4),
    triton.Config({"BN": 16, "KB": 32}, num_warps=4),
    triton.Config({"BN": 32, "KB": 32}, num_warps=4),
    triton.Config({"BN": 16, "KB": 16}, num_warps=2),
    triton.Config({"BN": 32, "KB": 16}, num_warps=2),
    triton.Config({"BN": 8, "KB": 16}, num_warps=2),
    triton.Config({"BN": 16, "KB": 8}, num_warps=1),
    triton.Config({"BN": 16, "KB": 32}, num_warps=8),
]
WIDE_DEFAULT = WIDE_CONFIGS[1]
GEMM_CONFIGS = [
    triton.Config({"BN": 64, "KB": 4}, num_warps=4),
    triton.Config({"BN": 128, "KB": 4}, num_warps=4),
    triton.Config({"BN": 128, "KB": 8}, num_warps=4),
    triton.Config({"BN": 64, "KB": 8}, num_warps=4),
    triton.Config({"BN": 128, "KB": 4}, num_warps=8),
]
GEMM_DEFAULT = GEMM_CONFIGS[1]

_gemv_tuned = triton.autotune(configs=GEMV_CONFIGS, key=["N", "K", "BITS", "HAS_ZP", "PER_BLOCK"])(_gemv_kernel)
_wide_tuned = triton.autotune(configs=WIDE_CONFIGS, key=["N", "K", "BITS", "HAS_ZP", "PER_BLOCK"])(_gemv_wide_kernel)
_gemm_tuned = triton.autotune(configs=GEMM_CONFIGS, key=["N", "K", "BITS", "HAS_ZP", "PER_BLOCK", "BM"])(_gemm_kernel)

_MAGIC = 0x3F800000  # float32 1.0
_AUTOTUNE = os.environ.get("PRESSO_W4A16_AUTOTUNE", "1") != "0"
# M == 1 kernel: "wide" (whole tile loaded up front) or "loop" (one 16-word block at a time)
GEMV_VARIANT = os.environ.get("PRESSO_W4A16_GEMV", "wide")
last_launch: dict[str, object] = {}


def _bm_for(m: int) -> int:
    return 16 if m <= 16 else 32 if m <= 32 else 64


def w4a16_matmul_prepared(
    x: torch.Tensor, pw: PreparedWeight, autotune: bool | None = None, gemv: str | None = None
) -> torch.Tensor:
    """``y = x @ W.T`` for x ``[..., K]`` (bf16/fp16 on CUDA) -> ``[..., N]`` in x's dtype."""
    k = pw.k
    if x.shape[-1] != k:
        raise ValueError(f"x has K={x.shape[-1]}, weight expects {k}")
    tune = _AUTOTUNE if autotune is None else autotune
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], pw.n
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y.reshape(*x.shape[:-1], n)
    vpw = 32 // pw.bits
    kw = pw.qweight.shape[1]
    n_blocks = kw // 16
    blk = 16 * vpw
    per_block = pw.group_size % blk == 0
    g = pw.scale.shape[1]
    zero = pw.zero if pw.zero is not None else pw.scale
    locks = _lock_buffer(x.device)
    common = dict(BITS=pw.bits, HAS_ZP=pw.zero is not None, PER_BLOCK=per_block)
    wide = (gemv or GEMV_VARIANT) == "wide"
    if m == 1:
        configs = (WIDE_CONFIGS if wide else GEMV_CONFIGS) if tune else [WIDE_DEFAULT if wide else GEMV_DEFAULT]
        bm, m_blocks = 1, 1
    else:
        configs = GEMM_CONFIGS if tune else [GEMM_DEFAULT]
        bm = _bm_for(m)
        m_blocks = triton.cdiv(m, bm)
    min_bn = min(c.kwargs["BN"] for c in configs)
    if triton.cdiv(n, min_bn) * m_blocks > _LOCK_SLOTS:
        raise ValueError("M*N too large for the split-K counters")
    max_split = triton.cdiv(n_blocks, min(c.kwargs["KB"] for c in configs))
    part = torch.empty(max_split * m * n, dtype=torch.float32, device=x.device)

    def grid(meta):
        return (triton.cdiv(n, meta["BN"]), m_blocks, triton.cdiv(n_blocks, meta["KB"]))

    if m == 1:
        args = (x2, pw.qweight, pw.scale, zero, y, part, locks, n, k, kw, g, pw.group_size, n_blocks)
        if tune:
            ck = (_wide_tuned if wide else _gemv_tuned)[grid](*args, _MAGIC, **common)
        else:
            cfg = configs[0]
            kern = _gemv_wide_kernel if wide else _gemv_kernel
            ck = kern[grid](*args, _MAGIC, **common, **cfg.kwargs, num_warps=cfg.num_warps)
        last_launch["gemv"] = ck
    else:
        args = (x2, pw.qweight, pw.scale, zero, y, part, locks, m, n, k, kw, g, pw.group_size,  # type: ignore[assignment]
                n_blocks)
        if tune:
            ck = _gemm_tuned[grid](*args, x2.stride(0), _MAGIC, **common, BM=bm)
        else:
            cfg = GEMM_DEFAULT
            ck = _gemm_kernel[grid](*args, x2.stride(0), _MAGIC, **common, BM=bm, **cfg.kwargs, num_warps=cfg.num_warps)
        last_launch["gemm"] = ck
    return y.reshape(*x.shape[:-1], n)


def best_configs() -> dict[str, dict]:
    """The autotuner's choices so far, keyed by kernel and shape key (for reports)."""
    out: dict[str, dict] = {}
    for name, tuner in (("gemv", _gemv_tuned), ("wide", _wide_tuned), ("gemm", _gemm_tuned)):
        for key, cfg in getattr(tuner, "cache", {}).items():
            out[f"{name}{key}"] = {**cfg.kwargs, "num_warps": cfg.num_warps}
    return out
