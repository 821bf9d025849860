"""Simulated FP8 KV cache: keys and values quantized where the attention layer hands them to its cache.

A recipe's ``kv_cache: {"format": "fp8"}`` calibrates one key scale and one value scale per attention layer
(``scale = absmax / 448`` over the calibration tokens, FP8 E4M3, as compressed-tensors' static min-max observer
computes ``k_scale`` / ``v_scale``), or with ``"strategy": "attn_head"`` one per key/value head (the cache's
``[batch, num_key_value_heads, seq, head_dim]`` tensors reduced over all but the head axis: GQA's KV heads, not the
query heads; compressed-tensors' ATTN_HEAD strategy), and installs a :class:`KVQuantizer` on the layer
(``module.presso_kv``).
From then on everything run on the model (the job's perplexity, KL and gate) sees keys (after the rotary
embedding) and values fake-quantized as a serving engine stores them in an FP8 cache.

How: a forward pre-hook on the attention module replaces its cache argument (``cache`` in transformers >= 5.25,
``past_key_values`` / ``past_key_value`` before) by a thin wrapper whose ``update(keys, values, ...)`` quantizes
and then calls the real cache, if any (compressed-tensors' ``QuantizedKVCache`` does the same;
compressed_tensors/modeling/kvcache.py). Attention layers that never call ``cache.update`` are not found
(checked at calibration: a layer whose keys were never seen fails the step). The quantizer is a plain attribute,
not a submodule: the state dict is unchanged until the artifact writer adds ``<attn>.k_scale`` / ``.v_scale``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from presso.compression.core.floatquant import ActScheme, fake_quant, static_act_scale

ATTR = "presso_kv"
FP8_TENSOR = ActScheme("fp8", "tensor", False)
FP8_HEAD = ActScheme("fp8", "attn_head", False)
STRATEGIES = ("tensor", "attn_head")
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")
PROJECTIONS = ("k_proj", "v_proj", "qkv_proj", "kv_b_proj")  # compressed-tensors' _KV_CACHE_PROJECTION_NAMES


@dataclass
class KVQuantizer:
    """Quantizes (or, while ``observing``, measures) the keys and values an attention layer caches."""

    k_scale: torch.Tensor | None = None  # float32 [1] (tensor) or [num_key_value_heads] (attn_head)
    v_scale: torch.Tensor | None = None
    observing: bool = False
    enabled: bool = True
    k_absmax: float = 0.0  # over all heads (both strategies)
    v_absmax: float = 0.0
    strategy: str = "tensor"  # tensor | attn_head
    k_head_absmax: torch.Tensor | None = None  # float32 [H], attn_head only
    v_head_absmax: torch.Tensor | None = None
    record: dict[str, Any] = field(default_factory=dict)
    _n: int = 0
    _clipped: int = 0

    def _observe(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_absmax = max(self.k_absmax, float(k.detach().abs().amax()))
        self.v_absmax = max(self.v_absmax, float(v.detach().abs().amax()))
        if self.strategy == "attn_head":
            kh, vh = (_head_absmax(t) for t in (k, v))
            self.k_head_absmax = kh if self.k_head_absmax is None else torch.maximum(self.k_head_absmax, kh)
            self.v_head_absmax = vh if self.v_head_absmax is None else torch.maximum(self.v_head_absmax, vh)

    def __call__(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.observing:
            self._observe(k, v)
            return k, v
        if not self.enabled or self.k_scale is None or self.v_scale is None:
            return k, v
        scheme = FP8_HEAD if self.strategy == "attn_head" else FP8_TENSOR
        kq, ck = fake_quant(k, scheme, self.k_scale.to(k.device))
        vq, cv = fake_quant(v, scheme, self.v_scale.to(v.device))
        self._n += k.numel() + v.numel()
        self._clipped += int(ck + cv)
        self.record["clip_rate"] = self._clipped / max(self._n, 1)
        return kq, vq

    def calibrate(self, dtype: torch.dtype) -> None:
        """Scales from the observed maxima, rounded to ``dtype`` (compressed-tensors keeps them in the model's
        dtype; the simulation and the artifact use the rounded value)."""
        self.observing = False
        if self.strategy == "attn_head":
            if self.k_head_absmax is None or self.v_head_absmax is None:
                raise ValueError("attn_head: no keys or values observed")
            self.k_scale = _scales(self.k_head_absmax, dtype)
            self.v_scale = _scales(self.v_head_absmax, dtype)
            self.record.update(format="fp8", strategy="attn_head", k_absmax=self.k_head_absmax.tolist(),
                               v_absmax=self.v_head_absmax.tolist(), k_scale=self.k_scale.tolist(),
                               v_scale=self.v_scale.tolist())
            return
        self.k_scale = _scales(torch.tensor([self.k_absmax]), dtype)
        self.v_scale = _scales(torch.tensor([self.v_absmax]), dtype)
        self.record.update(format="fp8", strategy="tensor", k_absmax=self.k_absmax, v_absmax=self.v_absmax,
                           k_scale=float(self.k_scale), v_scale=float(self.v_scale))

    def reset_stats(self) -> None:
        self._n = self._clipped = 0
        self.record.pop("clip_rate", None)


def _head_absmax(x: torch.Tensor) -> torch.Tensor:
    """float32 [H] of a cache tensor [batch, H, seq, head_dim] (compressed-tensors' ATTN_HEAD observer axes)."""
    if x.dim() != 4:
        raise ValueError(f"attn_head: the cache got a {x.dim()}-d tensor, expected [batch, heads, seq, head_dim]")
    return x.detach().abs().float().amax(dim=(0, 2, 3)).cpu()


def _scales(absmax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``absmax / 448`` per element, rounded to ``dtype`` (compressed-tensors keeps the scales in the model's dtype;
    the simulation and the artifact use the rounded value)."""
    return torch.cat([static_act_scale("fp8", a) for a in absmax.float().reshape(-1)]).to(dtype).float()


class _QuantizingCache:
    """Stands in for the layer's cache argument: quantizes, then defers to the real cache (if any)."""

    def __init__(self, quantizer: KVQuantizer, cache: Any) -> None:
        self._q = quantizer
        self._cache = cache

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        k, v = self._q(key_states, value_states)
        if self._cache is None:
            return k, v
        return self._cache.update(k, v, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        cache = self.__dict__.get("_cache")
        if cache is None:
            raise AttributeError(name)
        return getattr(cache, name)


def _cache_kwarg(module: nn.Module) -> str:
    params = inspect.signature(module.forward).parameters
    return next((k for k in _CACHE_KWARGS if k in params), "past_key_value")


def _pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict]:
    q = getattr(module, ATTR, None)
    if q is None:
        return args, kwargs
    real = None
    for k in _CACHE_KWARGS:
        v = kwargs.pop(k, None)
        real = real if v is None else v
    kwargs[str(module._presso_kv_kwarg)] = _QuantizingCache(q, real)
    return args, kwargs


def attention_modules(root: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """Attention layers under ``root`` (compressed-tensors' test: 'attention' in the class name, a k/v
    projection, and a forward that takes a cache argument)."""
    out = {}
    for name, mod in root.named_modules():
        if "attention" not in type(mod).__name__.lower() or not any(hasattr(mod, p) for p in PROJECTIONS):
            continue
        params = inspect.signature(mod.forward).parameters
        if any(k in params for k in _CACHE_KWARGS):
            out[f"{prefix}.{name}" if prefix and name else prefix or name] = mod
    return out


def install_(module: nn.Module, quantizer: KVQuantizer) -> None:
    setattr(module, ATTR, quantizer)
    if not getattr(module, "_presso_kv_hooked", False):
        module._presso_kv_kwarg = _cache_kwarg(module)  # type: ignore[assignment]
        module.register_forward_pre_hook(_pre_hook, with_kwargs=True)
        module._presso_kv_hooked = True  # type: ignore[assignment]


def quantizer_of(module: nn.Module) -> KVQuantizer | None:
    return getattr(module, ATTR, None)


def quantizers(model: nn.Module) -> dict[str, KVQuantizer]:
    return {n: q for n, m in model.named_modules() if (q := quantizer_of(m)) is not None}


@contextmanager
def disabled(model: nn.Module) -> Iterator[None]:
    """``with disabled(model):`` runs with keys and values unquantized."""
    qs = list(quantizers(model).values())
    for q in qs:
        q.enabled = False
    try:
        yield
    finally:
        for q in qs:
            q.enabled = True
