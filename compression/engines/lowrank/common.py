"""What the calibrated low-rank engines share: input covariances per linear, block-relative names."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from presso.compression.core.layout import in_out
from presso.compression.core.sequential import BlockInputs, forward_block, observe_inputs
from presso.compression.core.stats import gram_
from presso.compression.errors import InvalidRecipe


class InputCovariance:
    """Accumulates H = Xᵀ X (float32, [in, in]) for each observed module.

    Modules fed the very same tensor (q/k/v, gate/up) share one matmul: the last input is kept
    referenced, so an equal data pointer, shape and stride means equal data.
    """

    def __init__(self) -> None:
        self.h: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, name: str, x: torch.Tensor) -> None:
        x = x.detach()
        last = self._last
        if last is not None and _same_tensor(last[0], x):
            inc = last[1]
        else:
            inc = gram_(torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device), x)
            self._last = (x, inc)
        if name in self.h:
            self.h[name].add_(inc)
        else:
            self.h[name] = inc.clone()
        self.tokens[name] = self.tokens.get(name, 0) + x.shape[0]

    def release(self) -> None:
        self._last = None


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype and a.device == b.device)


@torch.no_grad()
def block_covariances(
    block: nn.Module, modules: Mapping[str, nn.Module], inputs: BlockInputs
) -> dict[str, torch.Tensor]:
    """H per module from one forward of ``block`` over the calibration inputs."""
    acc = InputCovariance()
    with observe_inputs(dict(modules), acc):
        forward_block(block, inputs)
    acc.release()
    return acc.h


def relative_name(full: str, block_name: str) -> str:
    return full[len(block_name) + 1:]


def check_rank(name: str, module: nn.Module, rank: int) -> None:
    in_f, out_f = in_out(module)
    if rank > min(in_f, out_f):
        raise InvalidRecipe(f"rank {rank} is larger than min(out, in) = {min(in_f, out_f)} of {name} "
                            f"[{out_f} x {in_f}]")
