"""Simulated activation quantization on Linear layers: a forward pre-hook that fake-quantizes the input.

A W8A8 or W4A4 step installs an :class:`ActQuantizer` on each quantized Linear (``module.presso_act``) and one
forward pre-hook that calls it, so everything run on the model afterwards (the job's perplexity, KL and gate,
later calibration passes, benchmarks) sees activations exactly as the scheme quantizes them, with
compressed-tensors' arithmetic (``presso.compression.core.floatquant.fake_quant``); no kernel is needed.

The hook is a module-level function and the quantizer a plain attribute (not a submodule), so the state dict,
the layer layout and ``copy.deepcopy`` are unchanged. Each quantizer keeps the statistics of what it has seen
(per-token absmax range, clipping rate) in its report record, a dict shared with the step's per-layer report:
``reset_stats`` at the end of the step, so the report holds what the evaluation saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from presso.compression.core.floatquant import ActScheme, fake_quant

ATTR = "presso_act"


@dataclass
class ActQuantizer:
    scheme: ActScheme
    static_scale: torch.Tensor | None = None  # fp8/int8 input_scale, or NVFP4 input_global_scale (float32 [1])
    calib_absmax: float | None = None
    record: dict[str, Any] = field(default_factory=dict)  # the layer's report record ("act" is written here)
    enabled: bool = True
    _n: int = 0
    _clipped: int = 0
    _tokens: int = 0
    _amin: float = float("inf")
    _amax: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or x.numel() == 0:
            return x
        scale = None if self.static_scale is None else self.static_scale.to(x.device)
        out, clipped = fake_quant(x, self.scheme, scale)
        tok = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=-1)
        lo, hi, c = torch.stack([tok.min().float(), tok.max().float(), clipped.float()]).tolist()
        self._n += x.numel()
        self._tokens += tok.numel()
        self._clipped += int(c)
        self._amin = min(self._amin, lo)
        self._amax = max(self._amax, hi)
        self.record["act"] = self.summary()
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.scheme.kind, "strategy": self.scheme.strategy, "dynamic": self.scheme.dynamic,
            "group_size": self.scheme.group_size,
        }
        if self.calib_absmax is not None:
            out["calibrated_absmax"] = self.calib_absmax
        if self.static_scale is not None:
            out["static_scale"] = float(self.static_scale.reshape(-1)[0])
        if self._n:
            out.update({"tokens": self._tokens, "token_absmax_min": self._amin, "token_absmax_max": self._amax,
                        "clip_rate": self._clipped / self._n})
        return out

    def reset_stats(self) -> None:
        self._n = self._clipped = self._tokens = 0
        self._amin, self._amax = float("inf"), 0.0
        self.record["act"] = self.summary()


def _pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    quantizer = getattr(module, ATTR, None)
    if quantizer is None or not args:
        return None
    return (quantizer(args[0]), *args[1:])


def install_(module: nn.Module, quantizer: ActQuantizer) -> None:
    """Quantize ``module``'s input with ``quantizer`` from now on (replaces an earlier one)."""
    setattr(module, ATTR, quantizer)
    if not getattr(module, "_presso_act_hooked", False):
        module.register_forward_pre_hook(_pre_hook)
        module._presso_act_hooked = True  # type: ignore[assignment]


def remove_(module: nn.Module) -> None:
    """Stop quantizing ``module``'s input (the hook stays, and does nothing without a quantizer)."""
    if hasattr(module, ATTR):
        delattr(module, ATTR)


def quantizer_of(module: nn.Module) -> ActQuantizer | None:
    return getattr(module, ATTR, None)


def quantizers(model: nn.Module) -> dict[str, ActQuantizer]:
    return {n: q for n, m in model.named_modules() if (q := quantizer_of(m)) is not None}


def reset_stats(model: nn.Module) -> None:
    for q in quantizers(model).values():
        q.reset_stats()


class disabled:  # noqa: N801 - used as a context manager
    """``with disabled(model):`` runs with activations unquantized (the weight-only simulation)."""

    def __init__(self, model: nn.Module) -> None:
        self.qs = list(quantizers(model).values())

    def __enter__(self) -> None:
        for q in self.qs:
            q.enabled = False

    def __exit__(self, *exc: object) -> None:
        for q in self.qs:
            q.enabled = True
