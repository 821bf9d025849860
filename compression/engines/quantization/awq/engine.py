"""AWQ engine: per group of linears sharing one input, search activation-aware scales, fold them, quantize.

Per block (layer-sequential, see compression.core.sequential):
1. one forward over the calibration batches groups every linear of the block by the tensor it
   reads and accumulates each group's Hessian and mean |x| per channel (gptq.observe);
2. each group's producer is found and verified (fold.py; planned on the first block);
3. groups with a producer: ``alpha`` search (awq_math) on the linears' exact output error;
   optionally (``verify`` > 0) the best few exponents are re-ranked by the decoder block's own
   output error on a few calibration sequences (that error sees the attention softmax and the MLP
   gate; at 4 bits on SmolLM2 it measured worse than the linear-level choice, so it is off by
   default); the winner's scales are folded into the producer and every linear reading that input
   (targeted or not, so the function is unchanged);
4. every targeted linear is quantized with RTN or GPTQ (``cfg.solver``) on the scaled weights
   with the scaled Hessian. A group without a foldable producer is quantized as is, and its
   records say so (``awq.producer = null`` with the reason).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from presso.compression.configs.quantization import AWQConfig, GPTQConfig, QuantArgs
from presso.compression.core import actquant
from presso.compression.core.context import StepContext
from presso.compression.core.experts import enclosing_expert, starved_experts
from presso.compression.core.layout import (
    block_linears,
    get_weight,
    in_out,
    is_linear,
    set_weight_,
)
from presso.compression.core.sequential import BlockInputs, forward_block, run_blockwise
from presso.compression.core.targets import targeted_linears
from presso.compression.engines.quantization.awq.awq_math import (
    GroupQuant,
    as_group_quant,
    ranked_alphas,
    scale_hessian,
    scales_for,
    search_scales,
)
from presso.compression.engines.quantization.awq.floatgrid import process_block
from presso.compression.engines.quantization.awq.fold import (
    Producer,
    fold_,
    fold_is_exact,
    identity_producers,
    norm_like,
)
from presso.compression.engines.quantization.common import layer_record, schemes_for
from presso.compression.engines.quantization.formats.engine import FormatEngine
from presso.compression.engines.quantization.gptq.engine import solve_shared, uncalled
from presso.compression.engines.quantization.gptq.observe import InputGroups, observe_block
from presso.compression.registry import register

log = logging.getLogger(__name__)
Plan = dict[tuple[str, ...], Producer | None]


def _rel(names: list[str], prefix: str) -> tuple[str, ...]:
    return tuple(n[len(prefix) + 1 :] for n in names)


def find_producer(
    block: nn.Module, members: tuple[str, ...], writers: list[str], inputs: BlockInputs
) -> Producer | None:
    """First candidate (identity writers, then linears of matching width) whose fold is verified exact.

    Linears of one MoE expert: candidates from the same expert only, verified on the expert's own function
    with random inputs (the block's output on a calibration batch barely depends on a rarely routed expert)."""
    width, _ = in_out(block.get_submodule(members[0]))
    consumers = [m for n, m in block.named_modules() if n and is_linear(m) and n in members]
    others = [n for n, m in block.named_modules() if n and is_linear(m) and in_out(m)[1] == width]
    scope = enclosing_expert(block, members[0])
    target, h, kw = block, inputs.hidden[0], inputs.kwargs[0]
    if scope is not None:
        sub_name, target = scope
        gate = target.linears()[0].weight
        h = torch.randn(64, gate.shape[1], generator=torch.Generator().manual_seed(0)).to(gate.device, gate.dtype)
        kw = {}
        writers = [n for n in writers if n.startswith(sub_name + ".")]
        others = [n for n in others if n.startswith(sub_name + ".")]
    for name in dict.fromkeys([*writers, *others]):
        if name in members:
            continue
        mod = block.get_submodule(name)
        kind = "norm" if norm_like(mod, width) else "linear" if is_linear(mod) and in_out(mod)[1] == width else None
        if kind and fold_is_exact(target, mod, kind, consumers, h, kw, width):
            return Producer(name=name, kind=kind)
    return None


def plan_block(block: nn.Module, prefix: str, groups: InputGroups, inputs: BlockInputs, plan: Plan) -> Plan:
    """Producers of every input group of this block not yet in ``plan`` (relative names)."""
    missing = [g for g in groups.groups().values() if _rel(g, prefix) not in plan]
    if missing:
        lins = {n[len(prefix) + 1 :]: m for n, m in block_linears(block, prefix).items()}
        writers = identity_producers(block, inputs.hidden[0], inputs.kwargs[0], lins)
        for g in missing:
            rel = _rel(g, prefix)
            plan[rel] = find_producer(block, rel, writers.get(rel[0], []), inputs)
            log.info("awq: %s <- %s", ",".join(rel), plan[rel])
    return plan


def calibration_subset(inputs: BlockInputs, samples: int) -> BlockInputs:
    """The first calibration batches holding at least ``samples`` sequences."""
    n, k = 0, 0
    while k < len(inputs.hidden) and n < samples:
        n += inputs.hidden[k].shape[0]
        k += 1
    return BlockInputs(hidden=inputs.hidden[:k], kwargs=inputs.kwargs[:k])


@dataclass
class Verifier:
    """Re-ranks candidate exponents by the error of the decoder block's output on a calibration subset."""

    block: nn.Module
    inputs: BlockInputs
    target: list[torch.Tensor]  # the block's output before this block's quantization

    def error(self, producer: nn.Module, kind: str, consumers: list[nn.Module],
              quantized: dict[nn.Module, QuantArgs] | tuple[list[nn.Module], GroupQuant], s: torch.Tensor) -> float:
        """Output error with ``s`` folded and the targeted consumers fake-quantized (their integer schemes, or a
        float grid's group quantizer over the given modules); leaves no trace."""
        params = [t for m in (producer, *consumers) for t in m.parameters(recurse=False)]
        saved = [t.detach().clone() for t in params]
        mods, quant = quantized if isinstance(quantized, tuple) else (list(quantized), list(quantized.values()))
        try:
            fold_(producer, kind, consumers, s)
            ws = [get_weight(mod, s.device) for mod in mods]
            for mod, w_hat in zip(mods, as_group_quant(quant)(ws), strict=True):
                set_weight_(mod, w_hat)
            out = forward_block(self.block, self.inputs)
            return sum(float((o.float() - t.float()).pow(2).sum()) for o, t in zip(out, self.target, strict=True))
        finally:
            for t, v in zip(params, saved, strict=True):
                t.data.copy_(v)


def _scale_group(block: nn.Module, prefix: str, members: list[str], producer: Producer, groups: InputGroups,
                 schemes: dict[str, QuantArgs | None], cfg: AWQConfig, verifier: Verifier | None,
                 grid: tuple[list[str], GroupQuant] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Search and fold one group's scales; returns the Hessian of the scaled inputs and the report note. The
    error is measured with the quantized members' integer ``schemes``, or with ``grid``: (the quantized members, a
    float grid's group quantizer; floatgrid.py)."""
    leader = members[0]
    h = groups.hessian(leader)
    quant = grid[0] if grid else [n for n in members if schemes.get(n) is not None]
    qfn: list[QuantArgs] | GroupQuant = grid[1] if grid else [schemes[n] for n in quant]  # type: ignore[misc]
    mod = {n: block.get_submodule(n[len(prefix) + 1 :]) for n in members}
    prod = block.get_submodule(producer.name)
    x_abs = groups.abs_mean(leader)
    ws = [get_weight(mod[n], h.device) for n in quant]
    s, alpha, errors = search_scales(ws, qfn, h, x_abs, cfg.grid)
    note: dict[str, Any] = {"producer": f"{prefix}.{producer.name}", "alpha_linear": alpha}
    consumers = [mod[n] for n in members]
    if verifier is not None:  # built only when cfg.verify > 0
        quantized = ([mod[n] for n in quant], qfn) if grid else {mod[n]: schemes[n] for n in quant}
        block_err = {a: verifier.error(prod, producer.kind, consumers, quantized, scales_for(x_abs, a))  # type: ignore[arg-type]
                     for a in ranked_alphas(errors)[: cfg.verify]}
        alpha = min(block_err, key=lambda a: block_err[a])
        s = scales_for(x_abs, alpha)
        note["block_error_vs_linear_choice"] = block_err[alpha] / max(block_err[note["alpha_linear"]], 1e-30)
    if alpha > 0:
        fold_(prod, producer.kind, consumers, s)
        h = scale_hessian(h, s)
    note["alpha"] = alpha
    note["error_vs_rtn"] = errors[round(alpha * cfg.grid)] / max(errors[0], 1e-30)
    return h, note


@register(AWQConfig)
class AWQEngine:
    def preflight(self, model: nn.Module, cfg: AWQConfig) -> None:
        if cfg.format != "int":  # the layers the float format cannot hold, before any work
            FormatEngine().preflight(model, cfg.format_step())

    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: AWQConfig, ctx: StepContext) -> dict[str, Any]:
        layout, chosen = targeted_linears(model, cfg)
        schemes = schemes_for(chosen, cfg)
        gptq = GPTQConfig() if cfg.solver == "gptq" else None
        plan: Plan = {}

        def process(i: int, block: nn.Module, inputs: BlockInputs) -> dict[str, Any]:
            prefix = layout.block_name(i)
            records = [layer_record(n, None, None) for n in chosen[i] if schemes[n] is None]
            quant = {n: m for n, m in chosen[i].items() if schemes[n] is not None}
            if not quant:
                return {"layers": records}
            verifier = None
            if cfg.verify > 0:
                subset = calibration_subset(inputs, cfg.verify_samples)
                verifier = Verifier(block, subset, forward_block(block, subset))
            if cfg.format != "int":  # a float grid: floatgrid.py
                records += process_block(model, cfg, ctx, prefix, block, inputs, quant, plan, verifier)
                return {"layers": sorted(records, key=lambda r: list(chosen[i]).index(r["name"]))}
            groups = observe_block(block, inputs, block_linears(block, prefix), ctx.device)
            starved = starved_experts(model, quant, cfg.expert_min_tokens)  # counts of this one pass
            plan_block(block, prefix, groups, inputs, plan)
            pending = []
            for members in groups.groups().values():
                if not any(n in quant for n in members) or any(n in starved for n in members):
                    continue
                producer = plan[_rel(members, prefix)]
                if producer is None:
                    h, note = groups.hessian(members[0]), {"producer": None, "reason": "no foldable producer"}
                else:
                    h, note = _scale_group(block, prefix, members, producer, groups, schemes, cfg, verifier)
                pending.append(({n: quant[n] for n in members if n in quant}, h, note))
            for mods, h, note in pending:
                for rec in solve_shared(mods, schemes, h, ctx.device, gptq):
                    records.append({**rec, "awq": note})
            missing = [n for n in quant if not any(n in mods for mods, _, _ in pending)]
            records += uncalled({n: quant[n] for n in missing}, {}, schemes, ctx.device,
                                {n: starved[n] for n in missing if n in starved})
            return {"layers": sorted(records, key=lambda r: list(chosen[i]).index(r["name"]))}

        blocks = run_blockwise(model, layout, ctx, process)
        layers = [rec for b in blocks for rec in b.get("layers", [])]
        scaled = sum(1 for r in layers if (r.get("awq") or {}).get("alpha", 0) > 0)
        log.info("awq: %d of %d quantized linears scaled (%s)", scaled, sum("rel_error" in r for r in layers),
                 cfg.format)
        if cfg.format != "int":
            for lins in chosen.values():  # the report keeps what runs after the step (the evaluation)
                for q in filter(None, map(actquant.quantizer_of, lins.values())):
                    q.reset_stats()
        return {"layers": layers, "solver": cfg.solver, "format": cfg.format}

