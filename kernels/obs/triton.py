"""Triton kernel of the OBS block column loop (see reference.py for the math).

One program owns ``BLOCK_N`` rows of the block (batched: rows of one layer, which reads that layer's
``U``) and keeps their ``[BLOCK_N, B]`` weights in registers for the whole loop; the ``B``
sequential column steps then cost a few register operations each instead of ~10 kernel launches
per column in eager PyTorch. Division and rounding use IEEE round-to-nearest (``div_rn``, ``rint``
= round half to even, like ``torch.round``), so codes match the reference except where an
FMA-contracted update lands a value exactly on a rounding boundary.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

MAX_BLOCK = 256  # columns held in registers per row


@triton.jit
def _obs_block_kernel(
    W, U, S, Z, P, Q, E, C,
    n_rows, n_cols, stride_w, stride_u, rows_per_u, stride_ub,
    qmin, qmax,
    BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, QUANT: tl.constexpr, PRUNE: tl.constexpr,
):
    pid = tl.program_id(0)
    U = U + ((pid * BLOCK_N) // rows_per_u) * stride_ub  # batched: this program's layer (its rows are all in it)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_B)
    rmask = rows < n_rows
    cmask = cols < n_cols
    row_off = rows * stride_w
    w = tl.load(W + row_off[:, None] + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    for i in range(0, n_cols):
        c = tl.sum(tl.where(cols[None, :] == i, w, 0.0), axis=1)
        q = c
        if PRUNE:
            p = tl.load(P + row_off + i, mask=rmask, other=0)
            q = tl.where(p != 0, 0.0, q)
        if QUANT:
            s = tl.load(S + row_off + i, mask=rmask, other=1.0)
            z = tl.load(Z + row_off + i, mask=rmask, other=0.0)
            code = libdevice.rint(libdevice.div_rn(q, s)) + z
            code = tl.minimum(tl.maximum(code, qmin), qmax)
            tl.store(C + row_off + i, code, mask=rmask)
            q = (code - z) * s
        d = tl.load(U + i * stride_u + i)
        e = libdevice.div_rn(c - q, d)
        tl.store(Q + row_off + i, q, mask=rmask)
        tl.store(E + row_off + i, e, mask=rmask)
        u = tl.load(U + i * stride_u + cols, mask=cmask & (cols > i), other=0.0)
        w = w - e[:, None] * u[None, :]


def supports(w: torch.Tensor) -> bool:
    """2-D [N, B], or batched [E, N, B] with N a multiple of 8 (a program's rows stay in one layer)."""
    shape_ok = w.dim() == 2 or (w.dim() == 3 and w.shape[1] % 8 == 0)
    return w.is_cuda and shape_ok and 0 < w.shape[-1] <= MAX_BLOCK


def obs_block(
    w: torch.Tensor,
    u: torch.Tensor,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
    qmin: float = 0.0,
    qmax: float = 0.0,
    prune: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Same contract as ``reference.obs_block_ref``; all tensors on one CUDA device."""
    shape = w.shape
    layers, n, b = (1, *shape) if w.dim() == 2 else shape
    rows_total = layers * n
    w = w.reshape(rows_total, b).contiguous().float()  # layers' rows one after another
    if prune is not None:
        prune = prune.reshape(rows_total, b)
    if scale is not None and zero is not None:
        scale, zero = scale.reshape(rows_total, b), zero.reshape(rows_total, b)
    u = u.contiguous().float()
    quant = scale is not None
    q = torch.empty_like(w)
    err = torch.empty_like(w)
    codes = torch.empty_like(w) if quant else None
    s = scale.contiguous().float() if scale is not None else w
    z = zero.contiguous().float() if zero is not None else w
    p = prune.contiguous().view(torch.uint8) if prune is not None else w
    block_b = max(16, triton.next_power_of_2(b))
    block_n = 16 if block_b <= 128 and (layers == 1 or n % 16 == 0) else 8
    grid = (triton.cdiv(rows_total, block_n),)
    _obs_block_kernel[grid](
        w, u, s, z, p, q, err, codes if codes is not None else q,
        rows_total, b, w.stride(0), u.stride(-2), n, u.stride(0) if u.dim() == 3 else 0, float(qmin), float(qmax),
        BLOCK_N=block_n, BLOCK_B=block_b, QUANT=quant, PRUNE=prune is not None,
        num_warps=4,
    )
    return q.view(shape), err.view(shape), codes.view(shape) if codes is not None else None
