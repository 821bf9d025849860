"""Experts of one shape solved together: GPTQ's per-expert solves batched (``GPTQConfig.expert_solve_batch``).

A mixture-of-experts block has hundreds of small solves (one per expert and input group). Alone, each is a few
thousand short GPU kernels (the range search, the column loop, the factorisation), so a block's time goes to
launches, not arithmetic. Here the input groups of experts that match — same member shapes, one scheme, observed
in the same pass — are stacked into batches (``gptq_math.quantize_weights``): one batched factorisation, one
column loop, one error computation per batch.

Batches are planned from the block's definition order, never from the order the router first reached the
experts, so they are the same whatever the order of calls and on every rank (compression.core.distributed
splits the batches, not the experts, across ranks): one rank and several give the same bytes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from presso.compression.configs.quantization import GPTQConfig, QuantArgs
from presso.compression.core.layout import get_weight, in_out
from presso.compression.core.quant import QuantizedWeight
from presso.compression.engines.quantization.common import layer_record
from presso.compression.engines.quantization.gptq.gptq_math import quantize_weights
from presso.compression.planmodel import SOLVE_BATCH_BYTES as BATCH_BYTES  # about 4 k x k float32 per expert

Solved = list[tuple[str, QuantizedWeight, dict[str, Any]]]


def split_rows(qw: QuantizedWeight, sizes: list[int]) -> list[QuantizedWeight]:
    """A row-stacked QuantizedWeight back into one per module."""
    out, start = [], 0
    for n in sizes:
        rows = slice(start, start + n)
        zero = qw.zero[rows] if qw.zero is not None else None
        out.append(QuantizedWeight(q=qw.q[rows], scale=qw.scale[rows], zero=zero, bits=qw.bits,
                                   group_size=qw.group_size))
        start += n
    return out


def _signature(mods: dict[str, nn.Module], schemes: dict[str, QuantArgs | None]) -> tuple[Any, ...] | None:
    """What experts must share to be solved together; None when the group is solved alone."""
    kinds = {schemes[n] for n in mods}
    if len(kinds) != 1 or None in kinds:
        return None
    return (next(iter(kinds)), tuple(in_out(m) for m in mods.values()))


def plan_batches(work: list[dict[str, nn.Module]], schemes: dict[str, QuantArgs | None], experts: set[str],
                 passes: list[set[str]], order: list[str], cfg: GPTQConfig) -> list[list[int]]:
    """Indices into ``work`` (input groups, each a dict of the linears solved together), batched: expert groups
    of one signature and one observation pass, in definition order (``order``), at most the configured batch
    size; every other group alone. Every index appears once."""
    pos = {n: i for i, n in enumerate(order)}
    first = sorted(range(len(work)), key=lambda k: pos[next(iter(work[k]))])
    buckets: dict[tuple[Any, ...], list[int]] = {}
    batches: list[list[int]] = []
    for k in first:
        mods = work[k]
        sig = _signature(mods, schemes) if not cfg.act_order and set(mods) <= experts else None
        if sig is None:
            batches.append([k])
            continue
        lead = next(iter(mods))
        p = next(i for i, names in enumerate(passes) if lead in names)
        buckets.setdefault((p, *sig), []).append(k)
    for (_p, _scheme, shapes), ks in buckets.items():
        width = max(k for k, _n in shapes)
        size = max(1, min(cfg.expert_solve_batch, BATCH_BYTES // (16 * width * width)))
        batches += [ks[i:i + size] for i in range(0, len(ks), size)]
    return sorted(batches, key=lambda b: pos[next(iter(work[b[0]]))])


def solve_batch(items: list[dict[str, nn.Module]], hessians: list[torch.Tensor],
                schemes: dict[str, QuantArgs | None], device: torch.device, cfg: GPTQConfig) -> list[Solved]:
    """GPTQ of the input groups ``items`` (one signature: :func:`plan_batches`) with their Hessians, without
    touching the modules: per group, (name, codes, report record) per linear, as ``engine.solve_group``."""
    names = [list(m) for m in items]
    scheme = schemes[names[0][0]]
    assert scheme is not None
    ws = [[get_weight(m[n], device) for n in m] for m in items]
    sizes = [x.shape[0] for x in ws[0]]
    w = torch.stack([torch.cat(x) if len(x) > 1 else x[0] for x in ws])
    h = torch.stack([x.to(device, torch.float32) for x in hessians])
    qws, _ = quantize_weights(w, h, scheme, damp_percent=cfg.damp_percent, block_size=cfg.block_size,
                              static_groups=cfg.groups_static())
    w_hat = torch.stack([q.dequantize(device) for q in qws])
    rel, out_err = member_errors(w, w_hat, h, sizes)
    del h, w_hat
    return [solved_records(mods, scheme, qw, sizes, rel[e], out_err[e])
            for e, (mods, qw) in enumerate(zip(names, qws, strict=True))]


def solved_records(names: list[str], scheme: QuantArgs, qw: QuantizedWeight, sizes: list[int], rel: list[float],
                   out_err: list[float]) -> Solved:
    """One input group's row-stacked codes split per linear, each with its report record."""
    out: Solved = []
    for name, code, r, o in zip(names, split_rows(qw, sizes), rel, out_err, strict=True):
        rec = layer_record(name, scheme, r)
        rec["output_error"] = o
        if len(names) > 1:
            rec["solved_with"] = names[0]
        out.append((name, code, rec))
    return out


def member_errors(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor,
                  sizes: list[int]) -> tuple[list[list[float]], list[list[float]]]:
    """Per layer of the batch and per member (``sizes``: the members' rows, stacked in order): the relative
    weight error and the relative output error ``||X dW^T|| / ||X W^T||`` from ``H``, with one host sync."""
    dw = w_hat - w
    rows = torch.stack([dw.pow(2).sum(-1), w.pow(2).sum(-1),
                        (torch.bmm(dw, h) * dw).sum(-1), (torch.bmm(w, h) * w).sum(-1)])  # [4, E, N]
    parts = torch.stack([p.sum(-1) for p in rows.split(sizes, dim=-1)], dim=-1)  # [4, E, members]
    rel = parts[0].sqrt() / parts[1].sqrt().clamp_min(1e-12)
    out = (parts[2].clamp_min(0) / parts[3].clamp_min(1e-20)).sqrt()
    return rel.tolist(), out.tolist()
