"""GPTQ engine: layer-sequential calibration, one Hessian per shared input, rows of sharing linears solved together.

Per block (see compression.core.sequential.run_blockwise): one forward over every calibration
batch with hooks on the chosen linears accumulates ``H = 2/n sum x x^T`` per distinct input
tensor; the linears reading that input (q/k/v, gate/up) with the same scheme are stacked and
solved in one GPTQ pass; each gets its codes (``set_quantized_``) and a report record with the
weight error and the layer-output error ``||X dW^T|| / ||X W^T||`` (from H, no extra forward).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from presso.compression.configs.quantization import GPTQConfig, QuantArgs
from presso.compression.core.context import StepContext
from presso.compression.core.distributed import Ranks, share_expert_counts
from presso.compression.core.expertchunks import counts_kept, passes_summary, plan_passes
from presso.compression.core.experts import starved_experts
from presso.compression.core.layout import get_weight, set_quantized_
from presso.compression.core.quant import quantize_rtn, relative_error
from presso.compression.core.sequential import BlockInputs, run_blockwise
from presso.compression.core.targets import targeted_linears
from presso.compression.engines.quantization.common import layer_record, schemes_for
from presso.compression.engines.quantization.gptq.batched import (
    Solved,
    member_errors,
    plan_batches,
    solve_batch,
    solved_records,
)
from presso.compression.engines.quantization.gptq.gptq_math import quantize_weight
from presso.compression.engines.quantization.gptq.observe import observe_block
from presso.compression.errors import InvalidRecipe
from presso.compression.registry import register

log = logging.getLogger(__name__)


def _by_scheme(names: list[str], schemes: dict[str, QuantArgs | None]) -> list[tuple[QuantArgs, list[str]]]:
    buckets: dict[QuantArgs, list[str]] = {}
    for n in names:
        scheme = schemes.get(n)
        if scheme is not None:
            buckets.setdefault(scheme, []).append(n)
    return list(buckets.items())


def solve_group(
    mods: dict[str, nn.Module],
    schemes: dict[str, QuantArgs | None],
    h: torch.Tensor,
    device: torch.device,
    gptq: GPTQConfig | None,
) -> Solved:
    """Quantize linears that share one input (Hessian ``h``) with GPTQ, or RTN when ``gptq`` is None, without
    touching the modules: (name, codes, report record with ``rel_error`` and ``output_error``) per module."""
    out: Solved = []
    for scheme, names in _by_scheme(list(mods), schemes):
        ws = [get_weight(mods[n], device) for n in names]
        w = torch.cat(ws) if len(ws) > 1 else ws[0]
        if gptq is None:
            qw = quantize_rtn(w, scheme)
        else:
            qw, _ = quantize_weight(w, h, scheme, damp_percent=gptq.damp_percent, block_size=gptq.block_size,
                                    act_order=gptq.act_order, static_groups=gptq.groups_static())
        sizes = [x.shape[0] for x in ws]
        # the errors as a batch of experts computes them (solve_batch), so a report is the same however batched
        rel, out_err = member_errors(w[None], qw.dequantize(device)[None], h.to(device, torch.float32)[None], sizes)
        out += solved_records(names, scheme, qw, sizes, rel[0], out_err[0])
    return out


def apply_solved(mods: dict[str, nn.Module], solved: Solved, device: torch.device) -> list[dict[str, Any]]:
    """Store each module's codes (``set_quantized_``); returns the records."""
    for name, qw, _ in solved:
        set_quantized_(mods[name], qw, device)
    return [rec for _, _, rec in solved]


def solve_shared(
    mods: dict[str, nn.Module],
    schemes: dict[str, QuantArgs | None],
    h: torch.Tensor,
    device: torch.device,
    gptq: GPTQConfig | None,
) -> list[dict[str, Any]]:
    """:func:`solve_group`, then the codes stored in the modules. Returns one report record per module."""
    return apply_solved(mods, solve_group(mods, schemes, h, device, gptq), device)


def uncalled(lins: dict[str, nn.Module], seen: dict[str, str], schemes: dict[str, QuantArgs | None],
              device: torch.device, reasons: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Linears the calibration forward never reached, or ``reasons`` names (experts that received too
    few routed tokens): RTN in the same scheme, and said so in the report (never skipped)."""
    records = []
    reasons = reasons or {}
    for name, mod in lins.items():
        if name not in seen or name in reasons:
            scheme = schemes[name]
            assert scheme is not None
            w = get_weight(mod, device)
            w_hat = set_quantized_(mod, quantize_rtn(w, scheme), device)
            rec = layer_record(name, scheme, relative_error(w, w_hat))
            why = reasons.get(name, "no calibration input reached this module")
            rec["fallback"] = f"rtn: {why}"
            log.warning("%s: %s; quantized with RTN", name, why)
            records.append(rec)
    return records


def check_act_order(cfg: GPTQConfig, schemes: dict[str, QuantArgs | None]) -> None:
    grouped = any(s is not None and s.group_size > 0 for s in schemes.values())
    if cfg.act_order and not cfg.groups_static() and grouped:
        raise InvalidRecipe(
            "act_order with static_groups=false needs a g_idx tensor, which pack-quantized artifacts "
            "(as Presso writes them) do not carry: use static_groups=true, or act_order=false, or group_size=-1"
        )


@register(GPTQConfig)
class GPTQEngine:
    distributed = True  # calibration batches and solves split across ranks (compression.core.distributed)

    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: GPTQConfig, ctx: StepContext) -> dict[str, Any]:
        layout, chosen = targeted_linears(model, cfg)
        schemes = schemes_for(chosen, cfg)
        check_act_order(cfg, schemes)

        def process(i: int, block: nn.Module, inputs: BlockInputs) -> dict[str, Any]:
            lins = {n: m for n, m in chosen[i].items() if schemes[n] is not None}
            records = [layer_record(n, None, None) for n in chosen[i] if schemes[n] is None]
            out: dict[str, Any] = {}
            if lins:
                ranks = ctx.dist if ctx.dist is not None and ctx.dist.splits(inputs.ids()[1]) else None
                records += observe_and_solve(model, block, inputs, lins, schemes, cfg, ctx.device, ranks, out)
            return {"layers": sorted(records, key=lambda r: list(chosen[i]).index(r["name"])), **out}

        blocks = run_blockwise(model, layout, ctx, process)
        layers = [rec for b in blocks for rec in b.get("layers", [])]
        log.info("gptq: %d linears quantized", sum("rel_error" in r for r in layers))
        moe = [b for b in blocks if b.get("experts_in_block")]
        chunking = passes_summary([b["expert_chunk"] for b in moe], [b["passes"] for b in moe]) if moe else {}
        return {"layers": layers, **({"expert_observation": chunking} if chunking else {})}


def observe_and_solve(model: nn.Module, block: nn.Module, inputs: BlockInputs, lins: dict[str, nn.Module],
                      schemes: dict[str, QuantArgs | None], cfg: GPTQConfig, device: torch.device,
                      ranks: Ranks | None, out: dict[str, Any]) -> list[dict[str, Any]]:
    """Observe one block (in one pass, or one pass per chunk of experts: compression.core.expertchunks), solve each
    input group once its statistics are complete, and store every group's codes after the last pass, so every
    pass sees the block as the first did. ``out`` gets the block's chunking facts. Returns the report records."""
    agree = (lambda c: min(x for part in ranks.union([c]) for x in part)) if ranks is not None else None
    plan = plan_passes(model, lins, cfg.expert_chunk, device, lambda k: 8 * (k * k + k), shared_input=True,
                       agree=agree)
    out.update(expert_chunk=plan.chunk, passes=len(plan.passes), experts_in_block=plan.experts)
    solved: dict[int, Solved] = {}
    work: list[dict[str, nn.Module]] = []
    batches: list[list[int]] = []
    seen: dict[str, str] = {}
    starved: dict[str, str] = {}
    t_observe = t_solve = 0.0
    for p, collect in enumerate(plan.passes):
        t0 = time.perf_counter()
        counts = share_expert_counts(model, lins, ranks) if p == 0 else counts_kept(model, lins)
        with counts:
            groups = observe_block(block, inputs, lins, device, ranks, collect if plan.chunked else None)
        t1 = time.perf_counter()
        if p == 0:  # every group (and every expert's routed tokens) is known after the first pass
            seen = dict(groups.leader_of)
            starved = starved_experts(model, lins, cfg.expert_min_tokens)
            work = [{n: lins[n] for n in members if n not in starved} for members in groups.groups().values()]
            work = [mods for mods in work if mods]
            batches = plan_batches(work, schemes, plan.expert_names, plan.passes, list(lins), cfg)
        mine: dict[int, Solved] = {}
        for b, ks in enumerate(batches):  # ranks split the batches (the same on every rank), not the groups
            if seen[next(iter(work[ks[0]]))] not in collect or (ranks is not None and not ranks.owns(b)):
                continue
            hs = [groups.hessian(next(iter(work[k]))) for k in ks]
            done = solve_batch([work[k] for k in ks], hs, schemes, device, cfg) if len(ks) > 1 \
                else [solve_group(work[ks[0]], schemes, hs[0], device, cfg)]
            mine.update(zip(ks, done, strict=True))
        t_observe, t_solve = t_observe + t1 - t0, t_solve + time.perf_counter() - t1
        del groups  # this pass's statistics go before the next pass collects its own
        solved.update(ranks.gather(mine) if ranks is not None else mine)  # every rank's solves, on every rank
    log.info("gptq block: observed in %.2fs (%d pass(es)), %d input groups solved in %d batches in %.2fs",
             t_observe, len(plan.passes), len(work), len(batches), t_solve)
    records: list[dict[str, Any]] = []
    for k, mods in enumerate(work):  # codes stored in the block's order, after the last pass
        records += apply_solved(mods, solved[k], device)
    return records + uncalled(lins, seen, schemes, device, starved)
