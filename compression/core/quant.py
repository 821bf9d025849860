"""Pure math of integer weight quantization shared by every quantizer.

Conventions (those of the compressed-tensors format, so artifacts need no conversion):
codes ``q`` are signed ints in [-2^(b-1), 2^(b-1) - 1]; ``W ≈ (q - zero) * scale`` per group
of ``group_size`` consecutive input columns; symmetric schemes have ``zero = 0``.

Groups that don't divide the input width: the math here supports a shorter last group
(``ceil(K / group_size)`` scale columns), but the loaders of the format (compressed-tensors in
transformers, vLLM) need ``K % group_size == 0``. So engines resolve a per-layer group size
with :func:`resolve_group`: the largest divisor of K not above the requested size; when that
divisor is below ``MIN_GROUP`` the layer falls back to one scale per output channel. The
effective size of every layer is recorded in the report (SmolLM2, K=576, g=128 -> 96).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from presso.compression.configs.quantization import QuantArgs
from presso.compression.core.staging import to_host

_CLIP_GRID = torch.linspace(1.0, 0.70, 13).tolist()


def qrange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


MIN_GROUP = 16


def resolve_group(k: int, group_size: int) -> int:
    """Group size actually used for a layer of input width ``k`` (-1 = per channel)."""
    if group_size <= 0 or group_size > k:
        return -1
    if group_size == k:
        return k
    for d in range(group_size, MIN_GROUP - 1, -1):
        if k % d == 0:
            return d
    return -1


def effective_group(group_size: int, k: int) -> int:
    return k if group_size <= 0 else group_size


def num_groups(k: int, group_size: int) -> int:
    return math.ceil(k / effective_group(group_size, k))


def expand_groups(t: torch.Tensor, k: int, group_size: int) -> torch.Tensor:
    """[N, G] per-group values -> [N, K] per-column values (last group may be shorter)."""
    g = effective_group(group_size, k)
    return t.repeat_interleave(g, dim=1)[:, :k]


def _grouped_reduce(w: torch.Tensor, group_size: int, fn: str) -> torch.Tensor:
    n, k = w.shape
    g = effective_group(group_size, k)
    pad = num_groups(k, g) * g - k
    if pad:
        # pad by repeating the last real column: it does not change min/max of the group
        w = torch.cat([w, w[:, -1:].expand(n, pad)], dim=1)
    w = w.reshape(n, -1, g)
    return w.amin(dim=2) if fn == "min" else w.amax(dim=2)


def params_from_range(
    wmin: torch.Tensor, wmax: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (float tensors holding integers) covering [wmin, wmax]."""
    qmin, qmax = qrange(bits)
    wmin = torch.minimum(wmin, torch.zeros_like(wmin))
    wmax = torch.maximum(wmax, torch.zeros_like(wmax))
    # Divide by a tensor, not a Python number: CUDA turns division by a CPU scalar into a multiply
    # by its reciprocal, one ulp off the IEEE quotient. That ulp decides how the group's extremes
    # (w / scale = +-7.5 at 4 bits, a rounding tie) round, and moved SmolLM2 RTN W4 perplexity from
    # 36.05 (CPU, and the peer) to 37.48 on the H200. With true division every device agrees.
    if symmetric:
        amax = torch.maximum(wmin.abs(), wmax)
        scale = amax / torch.full_like(amax, (qmax - qmin) / 2)
        zero = torch.zeros_like(scale)
    else:
        scale = (wmax - wmin) / torch.full_like(wmax, qmax - qmin)
        zero = torch.clamp(torch.round(qmin - wmin / scale.clamp_min(1e-12)), qmin, qmax)
    scale = torch.where(scale > 0, scale, torch.full_like(scale, 1e-8))
    return scale, zero


def quantize_codes(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int
) -> torch.Tensor:
    """Float weight -> integer codes (float dtype) using per-group scale/zero [N, G]."""
    qmin, qmax = qrange(bits)
    k = w.shape[1]
    s = expand_groups(scale, k, group_size)
    z = expand_groups(zero, k, group_size)
    return torch.clamp(torch.round(w / s) + z, qmin, qmax)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    k = q.shape[1]
    return (q.float() - expand_groups(zero, k, group_size)) * expand_groups(scale, k, group_size)


def choose_params(w: torch.Tensor, args: QuantArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group scale/zero for ``w`` [N, K] (float32). ``mse`` searches a clipping ratio per group."""
    wmin = _grouped_reduce(w, args.group_size, "min")
    wmax = _grouped_reduce(w, args.group_size, "max")
    scale, zero = params_from_range(wmin, wmax, args.bits, args.symmetric)
    if args.observer == "minmax":
        return scale, zero
    best_err = torch.full_like(scale, float("inf"))
    k = w.shape[1]
    for ratio in _CLIP_GRID:
        s, z = params_from_range(wmin * ratio, wmax * ratio, args.bits, args.symmetric)
        err = (dequantize_codes(quantize_codes(w, s, z, args.bits, args.group_size), s, z, args.group_size) - w)
        err = _group_sum(err.pow_(2), args.group_size, k)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scale = torch.where(better, s, scale)
        zero = torch.where(better, z, zero)
    return scale, zero


def _group_sum(x: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    n = x.shape[0]
    g = effective_group(group_size, k)
    pad = num_groups(k, g) * g - k
    if pad:
        x = torch.cat([x, x.new_zeros(n, pad)], dim=1)
    return x.reshape(n, -1, g).sum(dim=2)


@dataclass
class QuantizedWeight:
    """Integer codes and their parameters for one [N, K] weight."""

    q: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # float32 [N, G]
    zero: torch.Tensor | None  # int8 [N, G]; None when symmetric
    bits: int
    group_size: int  # as requested (-1 = per channel)

    def cpu(self) -> QuantizedWeight:
        """The same codes and parameters in host memory (where modules keep them for export)."""
        return QuantizedWeight(
            q=to_host(self.q),
            scale=to_host(self.scale),
            zero=None if self.zero is None else to_host(self.zero),
            bits=self.bits,
            group_size=self.group_size,
        )

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        """float32 weights, computed on ``device`` (default: where the codes are)."""
        q, scale = self.q.to(device or self.q.device), self.scale.to(device or self.q.device)
        zero = self.zero.to(q.device).float() if self.zero is not None else torch.zeros_like(scale)
        return dequantize_codes(q, scale, zero, self.group_size)

    @property
    def symmetric(self) -> bool:
        return self.zero is None


def quantize_rtn(w: torch.Tensor, args: QuantArgs) -> QuantizedWeight:
    w = w.float()
    scale, zero = choose_params(w, args)
    q = quantize_codes(w, scale, zero, args.bits, args.group_size)
    return make_quantized(q, scale, zero, args)


def make_quantized(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, args: QuantArgs) -> QuantizedWeight:
    """Codes and parameters on the device they were computed on (``set_quantized_`` moves them to host)."""
    return QuantizedWeight(
        q=q.to(torch.int8),
        scale=scale.float(),
        zero=None if args.symmetric else zero.to(torch.int8),
        bits=args.bits,
        group_size=args.group_size if args.group_size > 0 else -1,
    )


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((w.float() - w_hat.float()).norm() / w.float().norm().clamp_min(1e-12))
