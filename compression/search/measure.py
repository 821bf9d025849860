"""Per-layer candidates and sensitivities, measured once from calibration data, block-wise and layer-sequentially.

For each block (compression.core.sequential.run_blockwise, on the *dense* model: the block is left as it was,
so the next block sees dense inputs):

1. when a level uses GPTQ, one forward over every calibration batch accumulates each linear's input Hessian
   (the GPTQ engine's ``observe_block``);
2. for every searched linear and every level, the quantized weight is made (RTN, or GPTQ on that Hessian:
   the same solver the engine runs, on dense inputs) and kept, dequantized, in the module's layout and dtype;
3. the sensitivity of (linear, level) is the squared error of the block's output on ``samples`` calibration
   windows when only that linear is quantized at that level (sum over tokens and channels of the residual
   stream, so blocks are compared on one scale).

The kept weights are what the fitness swaps in (compression/search/fitness.py); the costs are the stored bits
(as the job's ``bits_per_weight`` metric counts them: codes, scales in the model's dtype, packed zero points)
or the artifact bytes of each layer at each level.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from presso.compression.configs.quantization import QuantArgs
from presso.compression.core.context import StepContext
from presso.compression.core.layout import Layout, get_weight, in_out, is_linear
from presso.compression.core.quant import num_groups, quantize_rtn, resolve_group
from presso.compression.core.sequential import BlockInputs, forward_block, run_blockwise
from presso.compression.search.allocation import Level

log = logging.getLogger(__name__)

TENSOR_HEADER_BYTES = 96  # a safetensors header entry (name, dtype, shape, offsets), roughly


@dataclass
class SearchLayer:
    name: str
    block: int
    module: nn.Module
    in_features: int
    out_features: int
    levels: list[Level]  # as written for this layer (Level.for_layer)
    bits: list[int]  # stored bits at each level (codes + scales + zero points)
    bytes: list[int]  # artifact bytes at each level (packed words, scales, shape, zero points, header)
    dense_bits: int
    dense_bytes: int


@dataclass
class LayerTable:
    layers: list[SearchLayer]
    errors: list[list[float]] = field(default_factory=list)  # sensitivity of each layer at each level
    weights: list[list[torch.Tensor]] = field(default_factory=list)  # module-layout weights at each level
    seconds: float = 0.0


def layer_costs(level: Level, in_f: int, out_f: int, elem_bytes: int, symmetric: bool) -> tuple[int, int]:
    """(stored bits, artifact bytes) of one [out_f, in_f] linear at ``level``."""
    g = resolve_group(in_f, level.group_size)
    groups = num_groups(in_f, g)
    zero_bits = 0 if symmetric else level.bits
    bits = in_f * out_f * level.bits + out_f * groups * (elem_bytes * 8 + zero_bits)
    words = math.ceil(in_f * level.bits / 32)
    nbytes = out_f * words * 4 + out_f * groups * elem_bytes + 16 + 3 * TENSOR_HEADER_BYTES
    if not symmetric:
        nbytes += groups * math.ceil(out_f * level.bits / 32) * 4 + TENSOR_HEADER_BYTES
    return bits, nbytes


def search_layers(chosen: dict[int, dict[str, nn.Module]], levels: list[Level], symmetric: bool) -> list[SearchLayer]:
    out = []
    for i, lins in chosen.items():
        for name, mod in lins.items():
            in_f, out_f = in_out(mod)
            elem = getattr(mod, "weight").element_size()  # noqa: B009
            written = [lv.for_layer(in_f) for lv in levels]
            costs = [layer_costs(lv, in_f, out_f, elem, symmetric) for lv in written]
            out.append(SearchLayer(
                name=name, block=i, module=mod, in_features=in_f, out_features=out_f, levels=written,
                bits=[c[0] for c in costs], bytes=[c[1] for c in costs], dense_bits=in_f * out_f * elem * 8,
                dense_bytes=in_f * out_f * elem + TENSOR_HEADER_BYTES,
            ))
    return out


def block_linear_weights(layout: Layout) -> tuple[int, int]:
    """(weights, dense bits) of every linear of the block list (what ``bits_per_weight`` is averaged over)."""
    n, bits = 0, 0
    for m in layout.blocks.modules():
        if is_linear(m):
            w: torch.Tensor = getattr(m, "weight")  # noqa: B009
            n += w.numel()
            bits += w.numel() * w.element_size() * 8
    return n, bits


def _subset(inputs: BlockInputs, rows: int) -> BlockInputs:
    hidden, kwargs, left = [], [], rows
    for h, kw in zip(inputs.hidden, inputs.kwargs, strict=True):
        if left <= 0:
            break
        take = min(left, h.shape[0])
        if take < h.shape[0]:
            kw = {k: (v[:take] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == h.shape[0] else v)
                  for k, v in kw.items()}
        hidden.append(h[:take])
        kwargs.append(kw)
        left -= take
    return BlockInputs(hidden=hidden, kwargs=kwargs)


def _static_groups(opts: dict[str, Any]) -> bool:
    """GPTQConfig.groups_static() on the dumped options: unset means static only under act_order."""
    given = opts.get("static_groups")
    return bool(opts.get("act_order", False)) if given is None else bool(given)


class _Factors:
    """One layer's damped inverse-Hessian factor, made on first use and shared by its GPTQ levels (the levels
    differ in bits and groups, not in the Hessian or the dampening)."""

    def __init__(self, w: torch.Tensor, h: torch.Tensor | None) -> None:
        self.w, self.h = w, h
        self.made: dict[float, torch.Tensor] = {}

    def get(self, damp: float) -> torch.Tensor:
        from presso.compression.engines.quantization.gptq.gptq_math import damped_inverse_upper

        assert self.h is not None
        if damp not in self.made:
            self.made[damp] = damped_inverse_upper(self.h.to(self.w.device, torch.float32), self.w.clone(), damp)
        return self.made[damp]


def _quantize(w: torch.Tensor, level: Level, in_f: int, h: torch.Tensor | None, opts: dict[str, Any],
              symmetric: bool, factors: _Factors | None = None) -> torch.Tensor:
    """Dequantized float32 [out, in] of ``w`` at ``level`` (GPTQ with ``h``, or RTN). ``factors``: the layer's
    shared inverse-Hessian factors (used unless act_order, which permutes the Hessian first)."""
    scheme = QuantArgs(bits=level.bits, group_size=resolve_group(in_f, level.group_size), symmetric=symmetric,
                       observer=opts.get("observer", "minmax"))
    if level.method == "gptq" and h is not None:
        from presso.compression.engines.quantization.gptq.gptq_math import quantize_weight, quantize_weights

        damp = opts.get("damp_percent", 0.01)
        if factors is not None and not opts.get("act_order", False):
            qws, _ = quantize_weights(w[None], h[None], scheme, damp_percent=damp,
                                      block_size=opts.get("block_size", 128), static_groups=_static_groups(opts),
                                      hinv=factors.get(damp)[None])
            return qws[0].dequantize(w.device)
        qw, _ = quantize_weight(w.clone(), h, scheme, damp_percent=damp,
                                block_size=opts.get("block_size", 128), act_order=opts.get("act_order", False),
                                static_groups=_static_groups(opts))
    else:  # rtn, or a gptq layer the calibration forward never reached (the engine then uses RTN too)
        qw = quantize_rtn(w, scheme)
    return qw.dequantize(w.device)


@torch.no_grad()
def measure(model: nn.Module, layout: Layout, layers: list[SearchLayer], ctx: StepContext, *, samples: int,
            options: dict[str, dict[str, Any]], symmetric: bool, store: torch.device) -> LayerTable:
    """Quantized weights and sensitivities of every (layer, level); ``options[method]`` are the step options
    (damp_percent, block_size, act_order, static_groups, observer). ``ctx.calibration`` feeds the Hessians;
    the first ``samples`` windows the block-output errors. Weights are kept on ``store``."""
    import time

    from presso.compression.engines.quantization.gptq.observe import observe_block

    t0 = time.perf_counter()
    table = LayerTable(layers=layers, errors=[[] for _ in layers], weights=[[] for _ in layers])
    by_block: dict[int, list[int]] = {}
    for k, layer in enumerate(layers):
        by_block.setdefault(layer.block, []).append(k)
    needs_h = any(lv.method == "gptq" for layer in layers for lv in layer.levels)
    spent = {"observe": 0.0, "quantize": 0.0, "forward": 0.0}  # where the time goes (logged)

    def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
        idx = by_block.get(i, [])
        if not idx:
            return
        lins = {layers[k].name: layers[k].module for k in idx}
        t = time.perf_counter()
        groups = observe_block(block, inputs, lins, ctx.device) if needs_h else None
        spent["observe"] += time.perf_counter() - t
        sub = _subset(inputs, samples)
        ref = forward_block(block, sub)
        for k in idx:
            layer = layers[k]
            mod = layer.module
            original: torch.Tensor = getattr(mod, "weight").data  # noqa: B009
            h = groups.hessian(layer.name) if groups is not None and layer.name in groups.leader_of else None
            w = get_weight(mod, ctx.device)
            factors = _Factors(w, h) if h is not None else None
            made: dict[Level, tuple[torch.Tensor, float]] = {}
            for lv in layer.levels:
                if lv not in made:
                    t = time.perf_counter()
                    w_hat = _quantize(w, lv, layer.in_features, h, options.get(lv.method, {}), symmetric, factors)
                    swapped = (w_hat if isinstance(mod, nn.Linear) else w_hat.t()).to(original.dtype).contiguous()
                    mod.weight.data = swapped
                    t1 = time.perf_counter()
                    out = forward_block(block, sub)
                    err = sum(float(((o.float() - r.float()) ** 2).sum()) for o, r in zip(out, ref, strict=True))
                    mod.weight.data = original
                    spent["quantize"] += t1 - t
                    spent["forward"] += time.perf_counter() - t1
                    made[lv] = (swapped.to(store), err)
                table.weights[k].append(made[lv][0])
                table.errors[k].append(made[lv][1])
            del w, factors

    run_blockwise(model, layout, ctx, process)
    table.seconds = time.perf_counter() - t0
    log.info("search: %d layers x %d levels measured in %.1fs (observe %.1fs, quantize %.1fs, block forwards "
             "%.1fs; quantize waits for the forward's GPU work only at its host syncs)", len(layers),
             len(layers[0].levels) if layers else 0, table.seconds, *spent.values())
    return table
