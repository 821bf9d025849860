"""prune_structured: remove MLP channels, KV groups of attention heads and whole blocks.

1. Plan (before any work): the same number of channels and KV groups goes in every block, so the
   result is a standard config; removing every channel or head of a layer is an error.
2. ``drop_blocks``: a dense pre-pass measures each block's influence, 1 - cos(input, output)
   averaged over calibration tokens (ShortGPT); the least influential blocks go.
3. Layer-sequential width pruning: per block, the Gram matrices of the inputs of ``o_proj`` and
   ``down_proj`` give each unit's importance (its output contribution, structured_math); the least
   important units go and the output projection is refit by least squares on what is left.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from presso.compression.configs.pruning import PruneStructuredConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import find_layout
from presso.compression.core.sequential import BlockInputs, forward_block, run_blockwise
from presso.compression.engines.pruning.common import Hessians, observe
from presso.compression.engines.pruning.structured import structured_math as sm
from presso.compression.engines.pruning.structured.surgery import (
    BlockParts,
    Geometry,
    block_parts,
    drop_blocks_,
    geometry,
    slice_linear_,
    unit_params,
    update_config_,
)
from presso.compression.errors import InvalidRecipe
from presso.compression.registry import register

log = logging.getLogger(__name__)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def plan(model: nn.Module, cfg: PruneStructuredConfig) -> tuple[Geometry, int, int]:
    """(geometry, channels removed per block, KV groups removed per block); raises on impossible targets."""
    layout = find_layout(model)
    if cfg.drop_blocks >= len(layout.blocks):
        raise InvalidRecipe(f"drop_blocks={cfg.drop_blocks} would remove all {len(layout.blocks)} blocks")
    parts = [block_parts(b, layout.block_name(i)) for i, b in enumerate(layout.blocks)]
    geo = geometry(model.config, parts[0])
    group_p, channel_p = unit_params(parts[0], geo)
    block_p = sum(p.numel() for p in layout.blocks[0].parameters())
    channels, groups = sm.plan_counts(inter=geo.inter, groups=geo.kv_heads, group_params=group_p,
                                      channel_params=channel_p, block_params=block_p, ratio=cfg.ratio,
                                      mlp_ratio=cfg.mlp_ratio, head_ratio=cfg.head_ratio)
    if groups >= geo.kv_heads:
        raise InvalidRecipe(f"the target removes {groups} of {geo.kv_heads} KV groups: every attention head "
                            "of each layer would go; lower head_ratio")
    if channels >= geo.inter:
        raise InvalidRecipe(f"the target removes {channels} of {geo.inter} MLP channels: every channel of each "
                            "layer would go; lower ratio or mlp_ratio")
    return geo, channels, groups


def _influence(model: nn.Module, ctx: StepContext) -> list[float]:
    layout = find_layout(model)
    scores: list[float] = []

    def measure(_i: int, block: nn.Module, inputs: BlockInputs) -> None:
        outs = forward_block(block, inputs)
        cos = [torch.nn.functional.cosine_similarity(h.float(), o.float(), dim=-1).mean()
               for h, o in zip(inputs.hidden, outs, strict=True)]
        scores.append(1.0 - float(torch.stack(cos).mean()))

    run_blockwise(model, layout, ctx, measure)
    return scores


def _prune_block_(parts: BlockParts, acc: Hessians, geo: Geometry, channels: int, groups: int) -> None:
    if channels:
        gram = acc.pop(parts.names["down_proj"])
        down = parts["down_proj"]
        keep = sm.keep_units(sm.unit_importance(down.weight.data, gram, 1), channels)
        new_down = sm.refit_output(down.weight.data, gram, keep)
        for leaf in ("gate_proj", "up_proj"):
            if leaf in parts.linears:
                slice_linear_(parts[leaf], rows=keep)
        slice_linear_(down, weight=new_down)
    if groups:
        gram = acc.pop(parts.names["o_proj"])
        o = parts["o_proj"]
        q_cols = geo.group * geo.head_dim
        kept_groups = sm.keep_units(sm.unit_importance(o.weight.data, gram, q_cols), groups)
        q_keep = sm.unit_columns(kept_groups, q_cols)
        kv_keep = sm.unit_columns(kept_groups, geo.head_dim)
        new_o = sm.refit_output(o.weight.data, gram, q_keep)
        slice_linear_(parts["q_proj"], rows=q_keep)
        slice_linear_(parts["k_proj"], rows=kv_keep)
        slice_linear_(parts["v_proj"], rows=kv_keep)
        slice_linear_(o, weight=new_o)


@register(PruneStructuredConfig)
class StructuredPruningEngine:
    @torch.no_grad()
    def apply_(self, model: nn.Module, cfg: PruneStructuredConfig, ctx: StepContext) -> dict[str, Any]:
        geo, channels, groups = plan(model, cfg)
        before = _params(model)
        blocks_before = _params(find_layout(model).blocks)
        dropped: list[int] = []
        if cfg.drop_blocks:
            influence = _influence(model, ctx)
            dropped = sorted(int(i) for i in torch.tensor(influence).argsort()[: cfg.drop_blocks])
            drop_blocks_(model, find_layout(model), dropped)
        layout = find_layout(model)
        if channels or groups:
            def process(i: int, block: nn.Module, inputs: BlockInputs) -> None:
                parts = block_parts(block, layout.block_name(i))
                acc = Hessians()
                wanted = {parts.names[leaf]: parts[leaf] for leaf, n in (("down_proj", channels), ("o_proj", groups))
                          if n}
                observe(block, inputs, wanted, acc)
                _prune_block_(parts, acc, geo, channels, groups)

            run_blockwise(model, layout, ctx, process)
            update_config_(model.config, geo, channels, groups)
        after = _params(model)
        blocks_after = _params(layout.blocks)
        log.info("structured pruning: %d -> %d parameters (%.1f%% fewer)", before, after, 100 * (1 - after / before))
        return {
            "params_before": before, "params_after": after, "fraction_removed": round(1 - after / before, 6),
            "block_params_before": blocks_before, "block_params_after": blocks_after,
            "block_fraction_removed": round(1 - blocks_after / blocks_before, 6),
            "channels_removed_per_block": channels, "kv_groups_removed_per_block": groups,
            "heads_removed_per_block": groups * geo.group, "dropped_blocks": dropped,
            "intermediate_size": geo.inter - channels, "num_attention_heads": geo.heads - groups * geo.group,
            "num_key_value_heads": geo.kv_heads - groups,
        }
