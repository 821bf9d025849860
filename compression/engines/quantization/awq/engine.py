"""AWQ engine: per group of linears sharing one input, search activation-aware scales, fold them, quantize.

Per block (layer-sequential, see compression.core.sequential):
1. one forward over the calibration batches groups every linear of the block by the tensor it
   reads and accumulates each group's Hessian and mean |x| per channel (gptq.observe);
2. each group's producer is found and verified (fold.py; planned on the first block);
3. groups with a producer: ``alpha`` search (awq_math), the scales folded into the producer and
   every linear reading that input (targeted or not, so the function is unchanged);
4. every targeted linear is quantized with RTN or GPTQ (``cfg.solver``) on the scaled weights
   with the scaled Hessian. A group without a foldable producer is quantized as is, and its
   records say so (``awq.producer = null`` with the reason).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from compression.configs.quantization import AWQConfig, GPTQConfig, QuantArgs
from compression.core.context import StepContext
from compression.core.layout import block_linears, find_layout, get_weight, in_out, is_linear, select_linears
from compression.core.sequential import BlockInputs, run_blockwise
from compression.engines.quantization.awq.awq_math import scale_hessian, search_scales
from compression.engines.quantization.awq.fold import Producer, fold_, fold_is_exact, identity_producers, norm_like
from compression.engines.quantization.common import layer_record, schemes_for
from compression.engines.quantization.gptq.engine import solve_shared, uncalled
from compression.engines.quantization.gptq.observe import InputGroups, observe_block
from compression.registry import register

log = logging.getLogger(__name__)
Plan = dict[tuple[str, ...], Producer | None]


def _rel(names: list[str], prefix: str) -> tuple[str, ...]:
    return tuple(n[len(prefix) + 1 :] for n in names)


def find_producer(
    block: nn.Module, members: tuple[str, ...], writers: list[str], inputs: BlockInputs
) -> Producer | None:
    """First candidate (identity writers, then linears of matching width) whose fold is verified exact."""
    width, _ = in_out(block.get_submodule(members[0]))
    consumers = [m for n, m in block.named_modules() if n and is_linear(m) and n in members]
    others = [n for n, m in block.named_modules() if n and is_linear(m) and in_out(m)[1] == width]
    for name in dict.fromkeys([*writers, *others]):
        if name in members:
            continue
        mod = block.get_submodule(name)
        kind = "norm" if norm_like(mod, width) else "linear" if is_linear(mod) and in_out(mod)[1] == width else None
        if kind and fold_is_exact(block, mod, kind, consumers, inputs.hidden[0], inputs.kwargs[0], width):
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


def _scale_group(block: nn.Module, prefix: str, members: list[str], producer: Producer, groups: InputGroups,
                 schemes: dict[str, QuantArgs | None], grid: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Search and fold one group's scales; returns the Hessian of the scaled inputs and the report note."""
    leader = members[0]
    h = groups.hessian(leader)
    quant = [n for n in members if schemes.get(n) is not None]
    ws = [get_weight(block.get_submodule(n[len(prefix) + 1 :]), h.device) for n in quant]
    s, alpha, errors = search_scales(ws, [schemes[n] for n in quant], h, groups.abs_mean(leader), grid)  # type: ignore[misc]
    if alpha > 0:
        consumers = [block.get_submodule(n[len(prefix) + 1 :]) for n in members]
        fold_(block.get_submodule(producer.name), producer.kind, consumers, s)
        h = scale_hessian(h, s)
    ratio = min(errors) / max(errors[0], 1e-30)
    return h, {"producer": f"{prefix}.{producer.name}", "alpha": alpha, "error_vs_rtn": ratio}


@register(AWQConfig)
class AWQEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: AWQConfig, ctx: StepContext) -> dict[str, Any]:
        layout = find_layout(model)
        chosen = select_linears(model, layout, cfg.targets, cfg.ignore)
        schemes = schemes_for(chosen, cfg)
        gptq = GPTQConfig() if cfg.solver == "gptq" else None
        plan: Plan = {}

        def process(i: int, block: nn.Module, inputs: BlockInputs) -> dict[str, Any]:
            prefix = layout.block_name(i)
            records = [layer_record(n, None, None) for n in chosen[i] if schemes[n] is None]
            quant = {n: m for n, m in chosen[i].items() if schemes[n] is not None}
            if not quant:
                return {"layers": records}
            groups = observe_block(block, inputs, block_linears(block, prefix), ctx.device)
            plan_block(block, prefix, groups, inputs, plan)
            pending = []
            for members in groups.groups().values():
                if not any(n in quant for n in members):
                    continue
                producer = plan[_rel(members, prefix)]
                if producer is None:
                    h, note = groups.hessian(members[0]), {"producer": None, "reason": "no foldable producer"}
                else:
                    h, note = _scale_group(block, prefix, members, producer, groups, schemes, cfg.grid)
                pending.append(({n: quant[n] for n in members if n in quant}, h, note))
            for mods, h, note in pending:
                for rec in solve_shared(mods, schemes, h, ctx.device, gptq):
                    records.append({**rec, "awq": note})
            missing = [n for n in quant if not any(n in mods for mods, _, _ in pending)]
            records += uncalled({n: quant[n] for n in missing}, {}, schemes, ctx.device)
            return {"layers": sorted(records, key=lambda r: list(chosen[i]).index(r["name"]))}

        blocks = run_blockwise(model, layout, ctx, process)
        layers = [rec for b in blocks for rec in b.get("layers", [])]
        scaled = sum(1 for r in layers if (r.get("awq") or {}).get("alpha", 0) > 0)
        log.info("awq: %d of %d quantized linears scaled", scaled, sum("rel_error" in r for r in layers))
        return {"layers": layers, "solver": cfg.solver}

