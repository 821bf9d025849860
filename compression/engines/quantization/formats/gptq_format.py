"""GPTQ rounding onto a float format's grid (FP8 E4M3, NVFP4, MXFP4): the OBS error compensation of GPTQ
(compression/engines/quantization/gptq/gptq_math.py) with each column rounded to the format's values instead of
an integer grid.

The scales are the format's round-to-nearest scales of the original weight (FP8 per tensor / channel / block,
NVFP4 group scales under the per-tensor global scale (shared by fused siblings), MXFP4 E8M0 group scales), fixed
before the solver runs, as llm-compressor's GPTQ does with its observers; only the codes change. Column ``j``:
``q_j = round_fmt(w_j / s_j) · s_j``, its error ``(w_j - q_j) / U_jj`` spread over the later columns with the
upper Cholesky factor ``U`` of ``H^-1``, in lazy blocks. With a diagonal ``H`` nothing is spread and the result is
the round-to-nearest one, code for code (tests/compression/engines/quantization/test_gptq_format.py).
"""

from __future__ import annotations

import torch

from presso.compression.core.floatquant import (
    FP4_MAX,
    FP8_BLOCK,
    FP8_DTYPE,
    FP8_MAX,
    INT8_MAX,
    INT8_MIN,
    FormatWeight,
    FP4Weight,
    e2m1_codes,
    expand_block_scale,
    round_e2m1,
)
from presso.compression.engines.quantization.gptq.gptq_math import damped_inverse_upper


def element_scales(fw: FormatWeight) -> torch.Tensor:
    """float32 [N, K]: what one code unit is worth at each weight."""
    n, k = fw.shape
    if fw.kind == "fp8":
        s = fw.scale.float()
        if fw.strategy == "block":
            return expand_block_scale(s, n, k, fw.block or FP8_BLOCK)
        return (s.reshape(-1, 1) if fw.strategy == "channel" else s.reshape(1, 1)).expand(n, k)
    if fw.kind == "int8":
        return fw.scale.float().reshape(-1, 1).expand(n, k)
    group = int(fw.group_size or 0)
    eff = FP4Weight(fw.codes, fw.scale, fw.global_scale, group).effective_scale()
    return eff.repeat_interleave(group, dim=1)


def round_units(v: torch.Tensor, kind: str) -> torch.Tensor:
    """``v`` (in code units) rounded onto the format's grid, saturating, as the format's RTN rounds."""
    if kind == "fp8":
        return v.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float()
    if kind == "int8":
        return torch.round(v.clamp(INT8_MIN, INT8_MAX))
    return round_e2m1(v.clamp(-FP4_MAX, FP4_MAX))


def codes_of(units: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "fp8":
        return units.to(FP8_DTYPE)
    if kind == "int8":
        return units.to(torch.int8)
    return e2m1_codes(units)


@torch.no_grad()
def gptq_format(w: torch.Tensor, h: torch.Tensor, rtn: FormatWeight, *, damp_percent: float = 0.01,
                block_size: int = 128) -> tuple[FormatWeight, float]:
    """GPTQ codes of ``w`` [N, K] on the grid of ``rtn`` (its round-to-nearest quantization, whose scales are
    kept), given the input Hessian ``h`` [K, K]. Returns the new FormatWeight and the OBS loss."""
    w = w.float().clone()
    n, k = w.shape
    s = element_scales(rtn).to(w.device)
    hinv = damped_inverse_upper(h.to(w.device, torch.float32), w, damp_percent)
    units = torch.empty_like(w)
    loss = torch.zeros((), device=w.device)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        blk = w[:, i1:i2].clone()
        u = hinv[i1:i2, i1:i2]
        err = torch.empty_like(blk)
        for j in range(i2 - i1):
            c = blk[:, j]
            sc = s[:, i1 + j]
            code = round_units(c / sc, rtn.kind)
            units[:, i1 + j] = code
            e = (c - code * sc) / u[j, j]
            err[:, j] = e
            blk[:, j + 1:].addr_(e, u[j, j + 1:], alpha=-1.0)
        loss += err.pow(2).sum() / 2
        w[:, i2:].addmm_(err, hinv[i1:i2, i2:], alpha=-1.0)
    out = FormatWeight(rtn.kind, rtn.strategy, codes_of(units, rtn.kind), rtn.scale, rtn.global_scale, rtn.block,
                       rtn.group_size)
    return out, float(loss)
