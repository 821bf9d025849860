"""Half-Quadratic Quantization (Badri & Shaji 2023) as pure tensor functions, per group, calibration-free.

HQQ minimises ``||W - dequant(Q(W))||_p^p`` with ``p < 1`` (robust to outliers) by splitting
the error off into an auxiliary variable ``W_e`` and alternating two closed-form steps:

1. ``W_e = shrink_p(W - W_r, beta)``, the generalised soft-thresholding of the current error
   ``W - W_r`` (``W_r`` the dequantized weight), i.e. the proximal step of the l_p term;
2. the quantization parameter in closed form given ``W_e``: the zero point is the group mean of
   ``q - (W - W_e) / s`` (the reference HQQ update);

``beta`` grows by ``kappa`` each iteration; each group keeps the parameters of its lowest
mean absolute error (the reference's stopping criterion), and the loop stops early once no
group improves.

Integer zero points (what keeps the artifact compressed-tensors pack-quantized): the
optimised float zero is rounded to the nearest integer in the code range, then the scale is
re-optimised with that integer zero by the same half-quadratic scheme (closed-form
least-squares scale on ``W - W_e``). Symmetric schemes (zero fixed at 0) run only this scale
phase. Finally each group keeps whichever of {HQQ, RTN (minmax or mse observer)} has the
lower squared error: HQQ's l_p fit wins on heavy-tailed groups, while the ``mse`` clip search
is often better in l2 on near-Gaussian ones, and l2 is what the layer output sees. So HQQ is
never worse than RTN (min/max or mse) in squared weight error.

Codes follow :mod:`presso.compression.core.quant`: ``W ~ (q - z) * s``, ``q`` in the signed range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from presso.compression.configs.quantization import QuantArgs
from presso.compression.core.quant import QuantizedWeight, choose_params, make_quantized, params_from_range, qrange


@dataclass(frozen=True)
class HQQParams:
    iters: int = 20
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalised soft-thresholding: the proximal operator of ``|x|^p / beta``."""
    if p == 1:
        return torch.sign(x) * torch.relu(x.abs() - 1.0 / beta)
    return torch.sign(x) * torch.relu(x.abs() - (1.0 / beta) * torch.pow(x.abs() + 1e-8, p - 1))


def _dequant(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: int, qmax: int) -> tuple[torch.Tensor, ...]:
    q = torch.clamp(torch.round(w / s + z), qmin, qmax)
    return q, (q - z) * s


def _l1(w: torch.Tensor, w_r: torch.Tensor) -> torch.Tensor:
    return (w - w_r).abs().mean(dim=1, keepdim=True)


def _sq(w: torch.Tensor, w_r: torch.Tensor) -> torch.Tensor:
    return (w - w_r).pow(2).sum(dim=1, keepdim=True)


def _half_quadratic(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, hp: HQQParams,
                    solve_zero: bool) -> torch.Tensor:
    """HQQ's alternating loop: shrink the error with the lp prox, then solve the free parameter
    (zero points when ``solve_zero``, else scales) in closed form; returns the best one seen by l1 error."""
    qmin, qmax = qrange(bits)
    beta = hp.beta
    param = z if solve_zero else s
    best_err = torch.full_like(param, float("inf"))
    best = param.clone()
    for _ in range(hp.iters):
        q, w_r = _dequant(w, s, z, qmin, qmax)
        err = _l1(w, w_r)
        better = err < best_err
        if not bool(better.any()):
            break
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, z if solve_zero else s, best)
        w_e = shrink_lp(w - w_r, beta, hp.lp_norm)
        if solve_zero:
            z = torch.mean(q - (w - w_e) / s, dim=1, keepdim=True)
        else:  # least-squares scale for the fixed (integer) zero points
            c = q - z
            den = (c * c).sum(dim=1, keepdim=True)
            new_s = ((w - w_e) * c).sum(dim=1, keepdim=True) / den.clamp_min(1e-12)
            s = torch.where((den > 0) & (new_s > 0), new_s, s)
        beta *= hp.kappa
    return best


def optimize_zero(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, hp: HQQParams) -> torch.Tensor:
    """Float zero points [R, 1] for rows ``w`` [R, g] with fixed scales ``s`` (HQQ's main loop)."""
    return _half_quadratic(w, s, z, bits, hp, solve_zero=True)


def optimize_scale(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, hp: HQQParams) -> torch.Tensor:
    """Scales [R, 1] for fixed (integer) zero points: half-quadratic with a least-squares scale step."""
    return _half_quadratic(w, s, z, bits, hp, solve_zero=False)


def quantize_hqq(w: torch.Tensor, scheme: QuantArgs, hp: HQQParams | None = None) -> QuantizedWeight:
    """HQQ-quantize ``w`` [N, K]; ``scheme.group_size`` must divide K (or be -1: one group per row)."""
    hp = hp or HQQParams()
    w = w.float()
    n, k = w.shape
    g = scheme.group_size if 0 < scheme.group_size <= k else k
    if k % g:
        raise ValueError(f"group size {g} does not divide {k}; resolve it first (compression.core.quant)")
    qmin, qmax = qrange(scheme.bits)
    rows = w.reshape(-1, g)
    s0, _ = params_from_range(rows.amin(1, keepdim=True), rows.amax(1, keepdim=True), scheme.bits, scheme.symmetric)
    if scheme.symmetric:
        z = torch.zeros_like(s0)
        s = optimize_scale(rows, s0, z, scheme.bits, hp)
    else:
        zf = optimize_zero(rows, s0, qmin - rows.amin(1, keepdim=True) / s0, scheme.bits, hp)
        z = torch.clamp(torch.round(zf), qmin, qmax)
        s = optimize_scale(rows, s0, z, scheme.bits, hp)
    # per group: keep the best (squared error) of HQQ and RTN with either observer, so HQQ is never
    # worse than RTN whatever the scheme's observer
    for observer in ("minmax", "mse"):
        s_rtn, z_rtn = choose_params(rows, scheme.model_copy(update={"group_size": -1, "observer": observer}))
        keep = _sq(rows, _dequant(rows, s, z, qmin, qmax)[1]) <= _sq(rows, _dequant(rows, s_rtn, z_rtn, qmin, qmax)[1])
        s, z = torch.where(keep, s, s_rtn), torch.where(keep, z, z_rtn)
    q = _dequant(rows, s, z, qmin, qmax)[0].reshape(n, k)
    return make_quantized(q, s.reshape(n, -1), z.reshape(n, -1), scheme)
