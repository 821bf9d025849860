"""The recipe's ``kv_cache`` option, run after its steps: calibrate FP8 key/value scales layer by layer
(per tensor or per KV head).

Per block (compression.core.sequential.run_blockwise, so the block's inputs come from the earlier blocks as
compressed, their activation and KV quantizers included): the block's attention layers get an observing
:class:`~presso.compression.core.kvquant.KVQuantizer`, the calibration batches run through the block, and each
quantizer turns its key / value absmax into ``k_scale`` / ``v_scale`` (absmax / 448) and starts quantizing; the
block's output for the next block is computed with its cache quantized. Not a registered step: it is not a
``StepConfig`` (not chainable, runs once at the end), and the pipeline calls it (compression/pipeline.py).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from presso.compression.configs.kvcache import KVCacheConfig
from presso.compression.core import kvquant
from presso.compression.core.context import StepContext
from presso.compression.core.layout import find_layout
from presso.compression.core.sequential import BlockInputs, run_blockwise
from presso.compression.errors import UnsupportedModel

log = logging.getLogger(__name__)


def preflight(model: nn.Module) -> None:
    """Fail before any work on a model whose blocks have no attention layer the KV quantizer can hook."""
    layout = find_layout(model)
    if not kvquant.attention_modules(layout.blocks[0]):
        raise UnsupportedModel(f"kv_cache: no attention layer with a k/v projection and a cache argument found in "
                               f"{layout.block_name(0)} ({type(layout.blocks[0]).__name__})")


@torch.no_grad()
def calibrate_(model: nn.Module, cfg: KVCacheConfig, ctx: StepContext) -> dict[str, Any]:
    layout = find_layout(model)
    preflight(model)

    def process(i: int, block: nn.Module, inputs: BlockInputs) -> dict[str, Any]:
        attns = kvquant.attention_modules(block, layout.block_name(i))
        qs = {}
        for name, mod in attns.items():
            qs[name] = kvquant.KVQuantizer(observing=True, strategy=cfg.strategy,
                                            record={"name": name, "format": cfg.format})
            kvquant.install_(mod, qs[name])
        for h, kw in zip(inputs.hidden, inputs.kwargs, strict=True):
            block(h, **kw)
        records = []
        for name, q in qs.items():
            if q.k_absmax == 0.0 and q.v_absmax == 0.0:
                raise UnsupportedModel(f"kv_cache: {name} never stored keys or values through its cache argument "
                                       f"({type(attns[name]).__name__}); Presso cannot simulate its FP8 cache")
            dtype = next(attns[name].parameters()).dtype
            q.calibrate(dtype)
            records.append(q.record)
        return {"layers": records}

    blocks = run_blockwise(model, layout, ctx, process)
    for q in kvquant.quantizers(model).values():
        q.reset_stats()  # the report keeps what runs after calibration (the evaluation)
    layers = [r for b in blocks for r in b.get("layers", [])]
    log.info("kv_cache: %d attention layers with FP8 key/value scales per %s", len(layers), cfg.strategy)
    return {"format": cfg.format, "strategy": cfg.strategy, "layers": layers}
