"""Layer-sequential calibration: one block (and its activations) on the device at a time.

1. Everything outside the block list moves to the device; the blocks stay where they are.
2. The calibration batches run until block 0, whose inputs (hidden states + keyword
   arguments such as position embeddings and masks) are captured.
3. For each block i: move it to the device, let the engine observe its linear inputs and
   compress it, run the compressed block to produce the inputs of block i+1, move it back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from presso.compression.core.context import StepContext
from presso.compression.core.layout import Layout
from presso.compression.errors import CalibrationRequired

log = logging.getLogger(__name__)


class _StopForward(Exception):
    pass


@dataclass
class BlockInputs:
    hidden: list[torch.Tensor]  # one [b, seq, d] tensor per calibration batch (of this rank's, under ctx.dist)
    kwargs: list[dict[str, Any]]
    batch_ids: list[int] | None = None  # which calibration batches these are; None: all of them, in order
    n_batches: int | None = None  # how many batches the calibration has in all

    def ids(self) -> tuple[list[int], int]:
        """(the calibration batch index of each entry, the number of batches in all)."""
        if self.batch_ids is None:
            return list(range(len(self.hidden))), len(self.hidden)
        return self.batch_ids, self.n_batches if self.n_batches is not None else len(self.hidden)

    def with_hidden(self, hidden: list[torch.Tensor]) -> BlockInputs:
        return BlockInputs(hidden, self.kwargs, self.batch_ids, self.n_batches)


def _move_outside_blocks_(model: nn.Module, layout: Layout, device: torch.device) -> None:
    block_ids = {id(m) for m in layout.blocks.modules()}
    for module in model.modules():
        if id(module) in block_ids:
            continue
        for p in list(module.parameters(recurse=False)):
            if p.device != device:
                p.data = p.data.to(device)
        for name, b in list(module.named_buffers(recurse=False)):
            if b.device != device:
                module._buffers[name] = b.to(device)


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_inputs(model: nn.Module, layout: Layout, ctx: StepContext) -> BlockInputs:
    if ctx.calibration is None:
        raise CalibrationRequired("this step needs calibration data")
    _move_outside_blocks_(model, layout, ctx.device)
    first = layout.blocks[0]
    home = next(first.parameters()).device
    streamed = home.type == "meta"  # a streamed block 0 is not read for this: the hook stops before it runs
    if not streamed:
        first.to(ctx.device)
    batches = list(ctx.calibration.split(ctx.batch_size))
    ranks = ctx.dist if ctx.dist is not None and ctx.dist.splits(len(batches)) else None
    mine = ranks.my_batches(len(batches)) if ranks is not None else list(range(len(batches)))
    captured = BlockInputs(hidden=[], kwargs=[], batch_ids=mine, n_batches=len(batches))

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.hidden.append(hidden.detach())
        captured.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b in mine:
            try:
                extras = ctx.batch_extras(b, getattr(model, "dtype", torch.float32))  # pixel_values, ...: VLMs
                model(input_ids=batches[b].to(ctx.device), use_cache=False, **extras)
            except _StopForward:
                pass
    finally:
        handle.remove()
        if not streamed:
            first.to(home)
    return captured


def _hidden_out(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


@torch.no_grad()
def forward_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    return [_hidden_out(block(h, **kw)) for h, kw in zip(inputs.hidden, inputs.kwargs, strict=True)]


@contextmanager
def observe_inputs(
    modules: dict[str, nn.Module], on_input: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """Call ``on_input(name, x)`` with the 2-D input [tokens, in_features] of each module's forward."""
    handles = []
    for name, mod in modules.items():

        def hook(_m: nn.Module, args: tuple, _out: Any, name: str = name) -> None:
            x = args[0]
            on_input(name, x.reshape(-1, x.shape[-1]))

        handles.append(mod.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


BlockFn = Callable[[int, nn.Module, BlockInputs], dict[str, Any] | None]


class BlockStream(Protocol):
    """Where blocks come from and go to when the model is streamed (``StepContext.stream``)."""

    def resume(self) -> tuple[int, list[torch.Tensor] | None, list[dict[str, Any]]]:
        """(first block to run, its saved input hidden states or None, the results of the blocks before it)."""

    def captured(self) -> None:
        """Block 0's inputs are captured (or not needed): what lies outside the blocks may be released."""

    def load(self, i: int, block: nn.Module) -> None:
        """Read block ``i``'s weights (it is on the meta device until then)."""

    def done(self, i: int, block: nn.Module, result: dict[str, Any], outputs: list[torch.Tensor] | None) -> None:
        """Block ``i`` is compressed and ``outputs`` (the next block's hidden states) computed: write it
        (and checkpoint it), then release its memory."""


def run_blockwise(model: nn.Module, layout: Layout, ctx: StepContext, process: BlockFn, *,
                  calibrated: bool = True) -> list[dict[str, Any]]:
    """Run ``process(i, block, inputs)`` on each block in order, feeding it the outputs of the
    already-processed blocks. Returns the per-block results.

    ``calibrated=False``: no inputs (``process`` gets empty ones) and no forward; what a calibration-free
    engine uses when the model is streamed (``ctx.stream``), so it still sees one block at a time. A stream
    may resume at a later block (compression.io.resume): the blocks before it are not run again."""
    stream: BlockStream | None = ctx.stream
    start, saved, results = stream.resume() if stream is not None else (0, None, [])
    inputs = capture_inputs(model, layout, ctx) if calibrated else BlockInputs(hidden=[], kwargs=[])
    if saved is not None and calibrated:
        inputs = inputs.with_hidden([h.to(ctx.device) for h in saved])
    if stream is not None:
        stream.captured()
    n = len(layout.blocks)
    for i, block in enumerate(layout.blocks):
        if i < start:
            continue
        t0 = time.perf_counter()
        if stream is not None:
            stream.load(i, block)
        home = next(block.parameters()).device
        if calibrated:
            block.to(ctx.device)
        res = process(i, block, inputs)
        t1 = time.perf_counter()
        results.append(res or {})
        if calibrated:
            inputs = inputs.with_hidden(forward_block(block, inputs))
            if stream is None:  # a stream packs the block where it is and releases it (no host copy of it)
                block.to(home)
        if stream is not None:
            stream.done(i, block, results[-1], inputs.hidden if calibrated else None)
        ctx.report((i + 1) / n)
        log.info("block %d/%d done in %.2fs (compress %.2fs, forward %.2fs)", i + 1, n,
                 time.perf_counter() - t0, t1 - t0, time.perf_counter() - t1)
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return results
