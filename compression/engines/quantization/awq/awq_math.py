"""AWQ scale search (Lin et al. 2023) as pure tensor functions.

For linears that share one input ``x`` (and so one input Hessian ``H = 2/n sum x x^T``):
scale input channel ``j`` by ``s_j = mean|x_j|^alpha`` (normalised so ``max(s) * min(s) = 1``),
quantize ``W diag(s)`` and divide the scale back out; pick ``alpha`` on a grid in ``[0, 1)``
minimising the group's output error ``sum_l ||X (W_l - Q(W_l diag s) diag(s)^-1)^T||^2``,
computed exactly from ``H`` as ``tr(dW H dW^T)`` (no activations kept). ``alpha = 0`` is plain
RTN, so the chosen scales are never worse than RTN on this measure. The search quantizes
with the scheme's own observer, the one the final quantization uses (its mse clip search
plays the part of AWQ's auto-clip): searching with min/max, as the reference's
pseudo-quantizer does, picks exponents that are too large once clipping is applied.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from presso.compression.configs.quantization import QuantArgs
from presso.compression.core.quant import choose_params, dequantize_codes, quantize_codes

# Quantize-dequantize the weights of one input group together (a float format's fused siblings share a scale):
# the integer schemes' per-weight quantizer (int_group_quant) or a float grid's (awq/floatgrid.py).
GroupQuant = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def awq_scales(x_abs_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    s = x_abs_mean.float().clamp_min(1e-8).pow(alpha).clamp_min(1e-4)
    return s / torch.sqrt(s.max() * s.min())


def fake_quant(w: torch.Tensor, scheme: QuantArgs) -> torch.Tensor:
    """Quantize-dequantize on ``w``'s own device (no codes kept)."""
    scale, zero = choose_params(w, scheme)
    q = quantize_codes(w, scale, zero, scheme.bits, scheme.group_size)
    return dequantize_codes(q, scale, zero, scheme.group_size)


def int_group_quant(schemes: list[QuantArgs]) -> GroupQuant:
    return lambda ws: [fake_quant(w, scheme) for w, scheme in zip(ws, schemes, strict=True)]


def as_group_quant(quant: list[QuantArgs] | GroupQuant) -> GroupQuant:
    return int_group_quant(quant) if isinstance(quant, list) else quant


def output_sq_error(dw: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``tr(dW H dW^T)`` = (n/2)-scaled squared output error of a weight change ``dW`` [N, K]."""
    return ((dw @ h) * dw).sum()


def scaled_error(ws: list[torch.Tensor], quant: list[QuantArgs] | GroupQuant, h: torch.Tensor,
                 s: torch.Tensor) -> float:
    """Output error of the group when its weights are quantized with input-channel scales ``s``."""
    total = torch.zeros((), device=h.device)
    for w, q in zip(ws, as_group_quant(quant)([w * s for w in ws]), strict=True):
        total += output_sq_error(q / s - w, h)
    return float(total)


def search_scales(
    ws: list[torch.Tensor], quant: list[QuantArgs] | GroupQuant, h: torch.Tensor, x_abs_mean: torch.Tensor,
    grid: int
) -> tuple[torch.Tensor, float, list[float]]:
    """Best input-channel scales for the group: (s [K], alpha, error per grid point). ``quant``: the weights'
    integer schemes, or a float grid's group quantizer."""
    ws = [w.float() for w in ws]
    h = h.float()
    errors = [scaled_error(ws, quant, h, awq_scales(x_abs_mean, j / grid)) for j in range(grid)]
    alpha = ranked_alphas(errors)[0]
    return scales_for(x_abs_mean, alpha), alpha, errors


def ranked_alphas(errors: list[float]) -> list[float]:
    """Grid exponents from the lowest error to the highest (grid point j is alpha = j / len(errors))."""
    return [j / len(errors) for j in sorted(range(len(errors)), key=lambda j: (errors[j], j))]


def scales_for(x_abs_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    return awq_scales(x_abs_mean, alpha) if alpha > 0 else torch.ones_like(x_abs_mean, dtype=torch.float32)


def scale_hessian(h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Hessian of the inputs ``x / s`` seen by ``W diag(s)`` after the fold."""
    inv = 1.0 / s
    return h * inv.unsqueeze(0) * inv.unsqueeze(1)
