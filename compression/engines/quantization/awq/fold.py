"""Find, verify and apply AWQ's scale folds, with no per-architecture tables.

AWQ multiplies the input channels of a group of linears (those reading one tensor) by ``s``
and divides the op that produced that tensor by ``s``, so the model keeps its standard
architecture. A *producer* is accepted when

- it is a norm-like module (a 1-D ``weight`` of the input width, optional ``bias``) or a linear
  of the block with that many outputs; candidates whose output *is* the group's input tensor
  (found with forward hooks) come first, other linears of matching width after (v_proj ->
  o_proj and up_proj -> down_proj: attention and ``act(gate) * up`` are linear per channel);
- and the fold is verified: with random positive ``s`` applied (producer / s, every linear
  reading the input * s) the block's output on the first calibration batch is unchanged
  within float tolerance. This rejects producers whose output also feeds something else
  (a residual, another branch) or a non-homogeneous function (GELU), and GQA shapes.

Blocks of one list share their structure, so the plan found on the first block is reused
(by relative module names) for the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from presso.compression.core.layout import get_weight, is_linear, set_weight_
from presso.compression.core.sequential import forward_block


@dataclass(frozen=True)
class Producer:
    name: str  # relative to the block
    kind: str  # "norm" | "linear"


def _key(x: torch.Tensor) -> tuple[Any, ...]:
    return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)


def norm_like(module: nn.Module, width: int) -> bool:
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    return (not is_linear(module) and isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == width
            and (b is None or (isinstance(b, torch.Tensor) and b.numel() == width)))


def fold_(producer: nn.Module, kind: str, consumers: list[nn.Module], s: torch.Tensor) -> None:
    """Divide the producer's output channels by ``s`` and multiply the consumers' input columns by ``s``."""
    s = s.float()
    if kind == "norm":
        weight: torch.Tensor = getattr(producer, "weight").data  # noqa: B009 - nn.Module attrs are untyped
        weight.div_(s.to(weight.device, weight.dtype))
    else:
        w = get_weight(producer)
        set_weight_(producer, w.float() / s.to(w.device).unsqueeze(1))
    bias = getattr(producer, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.data.div_(s.to(bias.device, bias.dtype))
    for c in consumers:
        w = get_weight(c)
        set_weight_(c, w.float() * s.to(w.device).unsqueeze(0))


@torch.no_grad()
def identity_producers(block: nn.Module, h: torch.Tensor, kw: dict[str, Any], linears: dict[str, nn.Module]
                       ) -> dict[str, list[str]]:
    """Relative linear name -> names of modules whose forward output is exactly that linear's input."""
    writers: dict[tuple[Any, ...], list[tuple[str, torch.Tensor]]] = {}
    reads: dict[str, tuple[Any, ...]] = {}
    handles = []
    for name, mod in block.named_modules():
        if not name:
            continue

        def post(_m: nn.Module, _a: tuple, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                writers.setdefault(_key(out), []).append((name, out))

        handles.append(mod.register_forward_hook(post))
    for name, mod in linears.items():

        def pre(_m: nn.Module, args: tuple, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                reads.setdefault(name, _key(args[0]))

        handles.append(mod.register_forward_pre_hook(pre))
    try:
        block(h, **kw)
    finally:
        for hd in handles:
            hd.remove()
    return {n: [w for w, _ in writers.get(k, [])] for n, k in reads.items()}


@torch.no_grad()
def fold_is_exact(block: nn.Module, producer: nn.Module, kind: str, consumers: list[nn.Module],
                  h: torch.Tensor, kw: dict[str, Any], width: int, seed: int = 0) -> bool:
    """True when folding random scales leaves the block's output unchanged (weights restored after)."""
    from presso.compression.core.sequential import BlockInputs

    params = [p for m in (producer, *consumers) for p in m.parameters(recurse=False)]
    saved = [p.data.clone() for p in params]
    inputs = BlockInputs(hidden=[h], kwargs=[kw])
    ref = forward_block(block, inputs)[0].float()
    gen = torch.Generator().manual_seed(seed)
    s = torch.exp(torch.empty(width).uniform_(-0.7, 0.7, generator=gen)).to(h.device)
    try:
        fold_(producer, kind, consumers, s)
        out = forward_block(block, inputs)[0].float()
    finally:
        for p, v in zip(params, saved, strict=True):
            p.data.copy_(v)
    tol = 1e-3 if h.dtype == torch.float32 else 3e-2
    return bool(torch.isfinite(out).all()) and float((out - ref).norm() / ref.norm().clamp_min(1e-12)) < tol
