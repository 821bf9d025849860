"""One calibration pass over a block: group linears that read the same input tensor, one Hessian per group.

q/k/v read the output of one norm, gate/up another: their Hessians are identical, so they are
accumulated once and the linears are solved together (rows stacked) — exactly the same result
as solving them one by one, for a third of the work. Sharing is detected by tensor identity
(same storage, shape and strides) within one forward; a reference to every input of the
current batch is held, so an address cannot be reused by another tensor before the batch ends.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from presso.compression.core.distributed import Ranks, segment_of
from presso.compression.core.sequential import BlockInputs, observe_inputs
from presso.compression.engines.quantization.gptq.gptq_math import HessianAccumulator


def _key(x: torch.Tensor) -> tuple[Any, ...]:
    return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)


class InputGroups:
    """Leader name -> member names (definition order) and the leader's accumulated statistics."""

    def __init__(self, device: torch.device, *, keep: bool = False, collect: set[str] | None = None) -> None:
        self.device = device
        self.keep = keep  # a rank after the first: segment sums kept for the chain (compression.core.distributed)
        self.collect = collect  # leaders whose statistics this pass accumulates (None: all); the groups are all
        self.leader_of: dict[str, str] = {}
        self.stats: dict[str, HessianAccumulator] = {}
        self._batch: dict[tuple[Any, ...], tuple[torch.Tensor, str]] = {}
        self._segment = 0

    def start_batch(self, segment: int) -> None:
        """The calibration segment of the batch about to run (statistics are summed segment by segment)."""
        self._segment = segment

    def leads(self, name: str, x: torch.Tensor) -> bool:
        """Record ``name``'s group on its first call (in whichever batch the router first sends an expert
        tokens); whether ``name`` leads it (a follower's leader has already seen this very tensor)."""
        key = _key(x)
        if name not in self.leader_of:
            hit = self._batch.get(key)
            self.leader_of[name] = hit[1] if hit is not None else name
        self._batch.setdefault(key, (x, name))
        return self.leader_of[name] == name

    def on_input(self, name: str, x: torch.Tensor) -> None:
        if not self.leads(name, x):
            return
        if self.collect is not None and name not in self.collect:
            return  # another observation pass collects this group (compression.core.expertchunks)
        if name not in self.stats:
            self.stats[name] = HessianAccumulator(x.shape[-1], self.device, keep=self.keep)
        self.stats[name].start_segment(self._segment)
        self.stats[name].add(x)

    def end_batch(self) -> None:
        self._batch.clear()

    def combine(self, ranks: Ranks, order: list[str]) -> None:
        """Sum every rank's statistics in the fixed segment order; afterwards every rank holds the totals, and
        the groups of linears any rank saw. ``order``: the block's linear names (the same on every rank)."""
        for part in ranks.union(list(self.leader_of.items())):
            for name, leader in part:
                self.leader_of.setdefault(name, leader)
        self.leader_of = {n: self.leader_of[n] for n in order if n in self.leader_of}
        shapes = dict(p for part in ranks.union([(n, a.k) for n, a in self.stats.items()]) for p in part)
        leaders = [n for n in order if n in shapes]
        counts = torch.tensor([self.stats[n].n if n in self.stats else 0 for n in leaders], dtype=torch.int64)
        ranks.sum_(counts)
        for name, n in zip(leaders, counts.tolist(), strict=True):
            k = shapes[name]
            acc = self.stats.setdefault(name, HessianAccumulator(k, self.device, keep=self.keep))
            fold = acc.local_fold()  # closes the open segment: folded on rank 0, kept on the others
            prefix = fold if ranks.rank == 0 else None
            h = ranks.chain_sum_(prefix[0] if prefix else None, [s[0] for s in acc.kept], (k, k))
            a = ranks.chain_sum_(prefix[1] if prefix else None, [s[1] for s in acc.kept], (k,))
            acc.finish((h, a), n)

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, leader in self.leader_of.items():
            out.setdefault(leader, []).append(name)
        return out

    def hessian(self, name: str) -> torch.Tensor:
        return self.stats[self.leader_of[name]].h

    def abs_mean(self, name: str) -> torch.Tensor:
        return self.stats[self.leader_of[name]].abs_mean


@torch.no_grad()
def observe_block(
    block: nn.Module, inputs: BlockInputs, modules: dict[str, nn.Module], device: torch.device,
    ranks: Ranks | None = None, collect: set[str] | None = None,
) -> InputGroups:
    """Run the block once over every calibration batch (of this rank, with ``ranks``) and collect grouped
    input statistics (over every rank's batches). ``collect``: only the groups led by these names get
    statistics (one pass of a chunked observation); every module's group is found either way."""
    groups = InputGroups(device, keep=ranks is not None and ranks.rank > 0, collect=collect)
    ids, n = inputs.ids()
    with observe_inputs(modules, groups.on_input):
        for b, h, kw in zip(ids, inputs.hidden, inputs.kwargs, strict=True):
            groups.start_batch(segment_of(b, n))
            block(h, **kw)
            groups.end_batch()
    if ranks is not None:
        groups.combine(ranks, list(modules))
    return groups
