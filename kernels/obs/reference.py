"""Pure-torch reference of the OBS block column loop shared by GPTQ and SparseGPT.

Inside one lazy block of ``B`` columns, column ``i`` is rounded (pruned and/or quantized),
its error is scaled by the inverse-Hessian factor's diagonal ``U[i, i]`` and spread over the
block's later columns through row ``i`` of ``U``:

    q_i    = quant(prune(w_i))            # prune: forced to 0; quant: codes with scale/zero of column i
    e_i    = (w_i - q_i) / U[i, i]
    w_j   -= e_i * U[i, j]   for j > i

Rows are independent, which is what the Triton kernel beside this file exploits. The caller
applies the block's error to the columns after the block with one matmul (``W[:, B:] -= E @ U``).

Batched (mixture-of-experts: several same-shape layers solved together): ``w`` [E, N, B] and ``u`` [E, B, B],
row ``r`` of layer ``e`` uses ``u[e]``; the loop is the same, each step one operation over every layer.
"""

from __future__ import annotations

import torch


def obs_block_ref(
    w: torch.Tensor,
    u: torch.Tensor,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
    qmin: float = 0.0,
    qmax: float = 0.0,
    prune: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run the column loop on one block.

    ``w`` [N, B] float32 block of weights (not modified), ``u`` [B, B] the block of the upper
    inverse-Hessian factor, ``scale``/``zero`` [N, B] per-column quantization parameters (both or
    neither), ``prune`` [N, B] bool, True = force to zero. Returns ``(q, err, codes)``: the final
    weights, the scaled errors ``e`` and, when quantizing, the integer codes as float32. Batched: every
    tensor with a leading layer dimension E (``u`` [E, B, B]), the results too.
    """
    if (scale is None) != (zero is None):
        raise ValueError("scale and zero go together")
    w = w.clone()
    b = w.shape[-1]
    batched = u.dim() == 3
    d = torch.diagonal(u, dim1=-2, dim2=-1)  # [B] or [E, B]
    q_out = torch.empty_like(w)
    err = torch.empty_like(w)
    codes = torch.empty_like(w) if scale is not None else None
    for i in range(b):
        c = w[..., i]
        q = c if prune is None else c.masked_fill(prune[..., i], 0.0)
        if scale is not None and zero is not None and codes is not None:
            s, z = scale[..., i], zero[..., i]
            code = torch.clamp(torch.round(q / s) + z, qmin, qmax)
            codes[..., i] = code
            q = (code - z) * s
        e = (c - q) / (d[:, i, None] if batched else d[i])
        q_out[..., i] = q
        err[..., i] = e
        if batched:  # w[e, :, j] -= e_i[e] * u[e, i, j]
            w[..., i + 1 :].sub_(e[:, :, None] * u[:, None, i, i + 1 :])
        else:
            w[:, i + 1 :].addr_(e, u[i, i + 1 :], alpha=-1.0)
    return q_out, err, codes
