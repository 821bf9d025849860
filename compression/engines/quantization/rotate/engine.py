"""rotate engine: an offline rotation of the residual stream (QuaRot / SpinQuant R1), folded into the weights.

1. Norms absorbed: every RMSNorm feeding linears (each block's, and the final one before the head) has its weight
   multiplied into the columns of the linears that read it, and is set to 1 (RMSNorm without a weight commutes with
   an orthogonal Q: ``rms(x Q) = rms(x)``). A tied head is untied first (the head absorbs the final norm, the
   embedding does not); the artifact then stores both (config ``tie_word_embeddings: false``).
2. Rotation: the residual stream becomes ``h Q``: embedding ``E Q``; every linear reading the stream (through a
   norm: q/k/v, gate/up, the head) ``W Q``; every linear writing into it (o_proj, down_proj: out width = the
   hidden size and not a reader) ``Q^T W`` (bias ``b Q``).

Which linears read a norm is found by forward hooks on block 0 (tensor identity), reused by name for
the other blocks; no per-architecture tables. The transform is checked: the logits on a probe batch before and
after must agree to float tolerance, or the step fails with ``unsupported_model`` (a LayerNorm with a mean, an
additive position embedding, a (1 + w) norm ... are not handled). The probe needs no calibration data.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from presso.compression.configs.transforms import RotateConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import Layout, find_layout, get_weight, in_out, is_linear, set_weight_
from presso.compression.core.sequential import capture_inputs
from presso.compression.engines.quantization.rotate.rotate_math import rotation
from presso.compression.errors import UnsupportedModel
from presso.compression.registry import register

log = logging.getLogger(__name__)
PROBE = (2, 24)  # probe batch: sequences x tokens


def _is_rmsnorm(mod: nn.Module, d: int) -> bool:
    w = getattr(mod, "weight", None)
    return ("rmsnorm" in type(mod).__name__.lower() and isinstance(w, torch.Tensor) and w.dim() == 1
            and w.numel() == d and getattr(mod, "bias", None) is None)


@dataclasses.dataclass
class Plan:
    readers: dict[str, list[str]]  # norm (relative name) -> linears reading it
    writers: list[str]  # linears writing into the residual stream
    final_norm: str  # full name


def _key(x: torch.Tensor) -> tuple[Any, ...]:
    return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)


def norm_readers(block: nn.Module, h: torch.Tensor, kw: dict[str, Any], norms: set[str],
                 lins: dict[str, nn.Module]) -> dict[str, list[str]]:
    """Norm (relative name) -> the linears whose input IS that norm's output, from one forward. Every output and
    input is held until the end, so no address is reused by another tensor (a false match)."""
    outs: dict[tuple[Any, ...], str] = {}
    reads: dict[str, tuple[Any, ...]] = {}
    held: list[torch.Tensor] = []
    handles = []
    for name in norms:
        def post(_m: nn.Module, _a: tuple, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                held.append(out)
                outs.setdefault(_key(out), name)
        handles.append(block.get_submodule(name).register_forward_hook(post))
    for name, mod in lins.items():
        def pre(_m: nn.Module, args: tuple, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                held.append(args[0])
                reads.setdefault(name, _key(args[0]))
        handles.append(mod.register_forward_pre_hook(pre))
    try:
        block(h, **kw)
    finally:
        for hd in handles:
            hd.remove()
    readers: dict[str, list[str]] = {}
    for lin, key in reads.items():
        if key in outs:
            readers.setdefault(outs[key], []).append(lin)
    return readers


def plan_model(model: nn.Module, layout: Layout, ctx: StepContext, probe: torch.Tensor, d: int) -> Plan:
    inputs = capture_inputs(model, layout, dataclasses.replace(ctx, calibration=probe))
    block = layout.blocks[0]
    home = next(block.parameters()).device
    block.to(ctx.device)
    lins = {n: m for n, m in block.named_modules() if n and is_linear(m)}
    norms = {n for n, m in block.named_modules() if n and _is_rmsnorm(m, d)}
    try:
        readers = norm_readers(block, inputs.hidden[0], inputs.kwargs[0], norms, lins)
    finally:
        block.to(home)
    read = {n for ns in readers.values() for n in ns}
    writers = [n for n, m in lins.items() if n not in read and in_out(m)[1] == d]
    block_ids = {id(m) for m in layout.blocks.modules()}
    finals = [n for n, m in model.named_modules() if id(m) not in block_ids and _is_rmsnorm(m, d)]
    if not readers or not writers or len(finals) != 1:
        raise UnsupportedModel(f"rotate: needs RMSNorm-fed linears, residual writers and one final RMSNorm of width "
                               f"{d}; found readers {readers}, writers {writers}, final norms {finals}")
    return Plan(readers=readers, writers=writers, final_norm=finals[0])


def _untie_(model: Any) -> bool:  # a transformers PreTrainedModel
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight.data_ptr() != emb.weight.data_ptr():
        return False
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False
    return True


def _norm_weight(norm: nn.Module) -> torch.Tensor:
    w: torch.Tensor = getattr(norm, "weight").data  # noqa: B009 - nn.Module attributes are untyped
    return w


def _fuse_norm_(norm: nn.Module, readers: list[nn.Module], device: torch.device) -> None:
    g = _norm_weight(norm).to(device, torch.float64)
    for lin in readers:
        set_weight_(lin, get_weight(lin, device).double() * g.unsqueeze(0))
    _norm_weight(norm).fill_(1.0)


def _rotate_in_(lin: nn.Module, q: torch.Tensor, device: torch.device) -> None:
    set_weight_(lin, get_weight(lin, device).double() @ q)


def _rotate_out_(lin: nn.Module, q: torch.Tensor, device: torch.device) -> None:
    set_weight_(lin, q.t() @ get_weight(lin, device).double())
    bias = getattr(lin, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.data.copy_((bias.data.to(device, torch.float64) @ q).to(bias.dtype))


@register(RotateConfig)
class RotateEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: RotateConfig, ctx: StepContext) -> dict[str, Any]:
        layout = find_layout(model)
        hf: Any = model  # a transformers PreTrainedModel
        emb, head = hf.get_input_embeddings(), hf.get_output_embeddings()
        d = int(emb.weight.shape[1])
        probe = torch.randint(0, int(emb.weight.shape[0]), PROBE, generator=torch.Generator().manual_seed(cfg.seed))
        dev = ctx.device
        home = emb.weight.device  # the probe runs where the model is; the weight math on the step's device
        before = hf(input_ids=probe.to(home), use_cache=False).logits.float()
        plan = plan_model(model, layout, ctx, probe, d)
        untied = _untie_(model)
        q = rotation(d, cfg.rotation, cfg.seed).to(dev)
        for i, block in enumerate(layout.blocks):
            for norm, readers in plan.readers.items():
                _fuse_norm_(block.get_submodule(norm), [block.get_submodule(r) for r in readers], dev)
                for r in readers:
                    _rotate_in_(block.get_submodule(r), q, dev)
            for w in plan.writers:
                _rotate_out_(block.get_submodule(w), q, dev)
            ctx.report((i + 1) / len(layout.blocks))
        if head is not None:
            _fuse_norm_(model.get_submodule(plan.final_norm), [head], dev)
            _rotate_in_(head, q, dev)
        else:
            _norm_weight(model.get_submodule(plan.final_norm)).fill_(1.0)
        emb.weight.data.copy_((emb.weight.data.to(dev, torch.float64) @ q).to(emb.weight.dtype))
        model.to(home)  # capture_inputs moved what is outside the blocks to the step's device
        after = hf(input_ids=probe.to(home), use_cache=False).logits.float()
        change = float((after - before).norm() / before.norm().clamp_min(1e-12))
        # float32: rounding only; 16-bit: every rotated weight is re-rounded (SmolLM2 in bfloat16: 2.5e-2); a wrong
        # structure changes real models' logits by O(1)
        tol = 1e-3 if emb.weight.dtype == torch.float32 else 1e-1
        if not change < tol:
            raise UnsupportedModel(f"rotate: the rotated {type(model).__name__} is not equivalent to the original "
                                   f"(relative logit change {change:.2e} on a probe batch); its norms or embeddings "
                                   "are not of the kind the rotation can absorb")
        if ctx.originals:  # the weights a later eora compares against are the rotated ones
            from presso.compression.pipeline import snapshot_linears

            ctx.originals = snapshot_linears(model)
        log.info("rotate: %s rotation of the %d-wide residual stream; logit change %.2e", cfg.rotation, d, change)
        return {"rotation": cfg.rotation, "dim": d, "untied_embeddings": untied, "readers": plan.readers,
                "writers": plan.writers, "final_norm": plan.final_norm, "probe_logit_change": change}
