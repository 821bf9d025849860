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

from presso.compression.core.sequential import BlockInputs, observe_inputs
from presso.compression.engines.quantization.gptq.gptq_math import HessianAccumulator


def _key(x: torch.Tensor) -> tuple[Any, ...]:
    return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)


class InputGroups:
    """Leader name -> member names (definition order) and the leader's accumulated statistics."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.leader_of: dict[str, str] = {}
        self.stats: dict[str, HessianAccumulator] = {}
        self._batch: dict[tuple[Any, ...], tuple[torch.Tensor, str]] = {}
        self._first_batch = True

    def on_input(self, name: str, x: torch.Tensor) -> None:
        key = _key(x)
        if self._first_batch and name not in self.leader_of:
            hit = self._batch.get(key)
            self.leader_of[name] = hit[1] if hit is not None else name
        self._batch.setdefault(key, (x, name))
        if self.leader_of.get(name, name) != name:
            return  # a follower: its leader has already accumulated this very tensor
        if name not in self.stats:
            self.stats[name] = HessianAccumulator(x.shape[-1], self.device)
        self.stats[name].add(x)

    def end_batch(self) -> None:
        self._batch.clear()
        self._first_batch = False

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
    block: nn.Module, inputs: BlockInputs, modules: dict[str, nn.Module], device: torch.device
) -> InputGroups:
    """Run the block once over every calibration batch and collect grouped input statistics."""
    groups = InputGroups(device)
    with observe_inputs(modules, groups.on_input):
        for h, kw in zip(inputs.hidden, inputs.kwargs, strict=True):
            block(h, **kw)
            groups.end_batch()
    return groups
