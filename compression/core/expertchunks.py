"""Experts of a block observed in chunks, so a layer with hundreds of experts fits in the device's memory.

A calibrated step holds statistics per distinct linear input while it observes a block: for a mixture-of-experts
block one Hessian per expert (gate/up share one, down has its own), e.g. 128 experts of a 2048-wide model with
768-wide experts: 128 x (2048^2 + 768^2) x 4 B = 2.4 GB, twice that while GPTQ sums a segment beside the fold.
With ``expert_chunk`` (StepConfig) the engine observes the block in several forward passes instead of one:

- pass 0 collects the statistics of the block's non-expert linears (attention, shared experts) and of the first
  chunk of experts; pass c of the c-th chunk only;
- every pass runs the same block over the same inputs: nothing the passes observe changes between them (GPTQ keeps
  each chunk's codes aside and stores them after the last pass; the pruning loop prunes a chunk's experts in
  place, which only changes what lies downstream of those experts, and prunes the non-expert linears last), so
  each linear sees the inputs the single pass gives it and the result is bit-identical;
- the routed-token counts are the first pass's (later passes restore them: :func:`counts_kept`).

Cost: one forward of the block per chunk. Memory: the non-expert statistics plus one chunk's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from presso.compression.core.experts import ExpertMLP, UnfusedExperts, expert_of
from presso.compression.core.layout import in_out
from presso.compression.plan import EXPERT_STATS_FRACTION  # automatic chunks: this share of the free GPU memory

log = logging.getLogger(__name__)



@dataclass
class ObservationPlan:
    """Which linears each observation pass of one block collects statistics for."""

    chunk: int | None  # experts per pass; None: every expert in one pass
    passes: list[set[str]]  # names (of the block's linears) per pass; pass 0 holds every non-expert linear
    experts: int = 0  # experts of the block among the linears
    expert_names: set[str] = field(default_factory=set)

    @property
    def chunked(self) -> bool:
        return len(self.passes) > 1


def block_experts(model: nn.Module, names: Mapping[str, Any]) -> dict[tuple[int, int], list[str]]:
    """(experts module id, expert index) -> the expert's linears among ``names``, in order of first appearance."""
    where = expert_of(model)
    out: dict[tuple[int, int], list[str]] = {}
    for n in names:
        if n in where:
            mod, e = where[n]
            out.setdefault((id(mod), e), []).append(n)
    return out


def expert_stats_bytes(model: nn.Module, names: Mapping[str, nn.Module], bytes_of: Callable[[int], int], *,
                       shared_input: bool) -> tuple[int, int]:
    """(the largest statistics bytes of one expert, those of the non-expert linears) among ``names``.

    ``bytes_of(k)``: one statistic's bytes for a ``k``-wide input. ``shared_input``: linears reading one tensor
    (an expert's gate and up) share one statistic, as GPTQ's input groups do."""
    where = expert_of(model)
    per_expert: dict[tuple[int, int], int] = {}
    widths: dict[tuple[int, int], set[int]] = {}
    other = 0
    for n, mod in names.items():
        k = in_out(mod)[0]
        if n not in where:
            other += bytes_of(k)
            continue
        key = (id(where[n][0]), where[n][1])
        expert = where[n][0][where[n][1]]
        assert isinstance(expert, ExpertMLP)
        reads_x = shared_input and mod is not expert.linears()[2]  # gate / up read the expert's input
        if reads_x and k in widths.setdefault(key, set()):
            continue
        if reads_x:
            widths[key].add(k)
        per_expert[key] = per_expert.get(key, 0) + bytes_of(k)
    return max(per_expert.values(), default=0), other


def _auto_chunk(per_expert: int, other: int, n_experts: int, device: torch.device) -> int | None:
    if device.type != "cuda" or per_expert == 0:
        return None
    free, _total = torch.cuda.mem_get_info(device)
    budget = EXPERT_STATS_FRACTION * free - other
    chunk = max(1, int(budget // per_expert))
    log.info("expert_chunk automatic: %d experts (%.2f GB of statistics each, %.2f GB free)", min(chunk, n_experts),
             per_expert / 1e9, free / 1e9)
    return chunk


def plan_passes(model: nn.Module, names: Mapping[str, nn.Module], chunk: int | None, device: torch.device,
                bytes_of: Callable[[int], int], *, shared_input: bool,
                agree: Callable[[int], int] | None = None) -> ObservationPlan:
    """The observation passes of one block's linears ``names`` for the step option ``expert_chunk`` (``chunk``).

    ``agree``: makes an automatic chunk the same on every rank (the smallest), so ranks run the same passes."""
    experts = block_experts(model, names)
    modules = {k[0] for k in experts}
    expert_names = {n for ns in experts.values() for n in ns}
    if chunk is None and experts:
        per_expert, other = expert_stats_bytes(model, names, bytes_of, shared_input=shared_input)
        chunk = _auto_chunk(per_expert, other, len(experts), device)
        if chunk is not None and agree is not None:
            chunk = agree(chunk)
    if chunk is None or chunk >= len(experts) or len(modules) > 1:
        # several experts modules in one block: a chunk's experts could feed the next chunk's inputs
        return ObservationPlan(None, [set(names)], len(experts), expert_names)
    keys = list(experts)
    passes = [{n for k in keys[c:c + chunk] for n in experts[k]} for c in range(0, len(keys), chunk)]
    passes[0] |= {n for n in names if n not in expert_names}
    log.info("%d experts observed in %d passes of %d", len(keys), math.ceil(len(keys) / chunk), chunk)
    return ObservationPlan(chunk, passes, len(experts), expert_names)


@contextmanager
def counts_kept(model: nn.Module, names: Mapping[str, Any]) -> Iterator[None]:
    """Around a later observation pass: the experts' routed-token counts stay what the first pass made them."""
    where = expert_of(model)
    mods: dict[int, UnfusedExperts] = {id(where[n][0]): where[n][0] for n in names if n in where}
    before = {k: m.tokens_seen.clone() for k, m in mods.items()}
    try:
        yield
    finally:
        for k, m in mods.items():
            m.tokens_seen = before[k]


def passes_summary(chunks: list[int | None], passes: list[int]) -> dict[str, Any]:
    """What a step's ``experts`` report says: the chunk used and the observation passes of each MoE block."""
    used = sorted({c for c in chunks if c is not None})
    return {"expert_chunk": used[0] if len(used) == 1 else (used or None), "observation_passes": passes}
