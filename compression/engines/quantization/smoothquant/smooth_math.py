"""SmoothQuant's scales and the W8A8 output error its alpha search minimizes. Pure torch.

``s_j = max|X_j|^alpha / max_i |W_ij|^(1-alpha)`` over the input channels j of one input group (the maxima of the
weights over every linear reading X), as in the paper (Xiao et al. 2023, ``smooth_ln_fcs``) and llm-compressor's
``_calculate_smoothing_scales``: a channel whose weights are all zero keeps ``s = max|X_j|``, and ``s`` is clamped
at 1e-5 (a dead activation channel). The quantized model computes ``Q(X / s) Q(W · s)^T`` instead of ``X W^T``.
"""

from __future__ import annotations

import torch

from presso.compression.configs.quantization import QuantArgs
from presso.compression.core.floatquant import ActScheme, fake_quant, quantize_weight
from presso.compression.core.quant import quantize_rtn

INT8_CHANNEL = QuantArgs(bits=8, group_size=-1, symmetric=True)
MIN_SCALE = 1e-5


def smoothing_scales(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-channel ``s`` [K] from the activation maxima ``x_max`` [K] and the weight maxima ``w_max`` [K]."""
    x_max, w_max = x_max.float(), w_max.float()
    s = x_max.pow(alpha) / w_max.pow(1 - alpha)
    s = torch.where(w_max > 0, s, x_max)
    return s.clamp_min(MIN_SCALE)


def weight_maxima(weights: list[torch.Tensor]) -> torch.Tensor:
    """max_i |W_ij| over the rows of every [N, K] weight reading the group's input: [K]."""
    return torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)


def fake_w8a8(x: torch.Tensor, w: torch.Tensor, fmt: str) -> torch.Tensor:
    """``Q(x) Q(w)^T`` with per-channel weights and per-token dynamic activations in ``fmt`` (int8 | fp8)."""
    if fmt == "int8":
        w_hat = quantize_rtn(w, INT8_CHANNEL).dequantize(w.device)
    else:
        w_hat = quantize_weight(w, "fp8", "channel").dequantize(w.device)
    x_hat, _ = fake_quant(x, ActScheme(fmt, "token", True))
    return x_hat @ w_hat.t()


def w8a8_error(x: torch.Tensor, weights: list[torch.Tensor], s: torch.Tensor, fmt: str) -> float:
    """Squared output error of the group's linears after smoothing by ``s`` and W8A8 fake quantization."""
    xs = x / s
    err = 0.0
    for w in weights:
        ref = x @ w.t()
        err += float((fake_w8a8(xs, w * s, fmt) - ref).pow(2).sum())
    return err


def search_alpha(x: torch.Tensor, weights: list[torch.Tensor], x_max: torch.Tensor, grid: int, fmt: str
                 ) -> tuple[float | None, dict[str, float]]:
    """The alpha in {i / grid} (or None: no smoothing) with the lowest :func:`w8a8_error` on the tokens ``x``
    [T, K]; returns it and every candidate's error (key ``"none"`` for no smoothing)."""
    w_max = weight_maxima(weights)
    errors: dict[str, float] = {"none": w8a8_error(x, weights, torch.ones_like(x_max), fmt)}
    for i in range(grid + 1):
        a = i / grid
        errors[f"{a:g}"] = w8a8_error(x, weights, smoothing_scales(x_max, w_max, a), fmt)
    best = min(errors, key=lambda k: errors[k])
    return (None if best == "none" else float(best)), errors
