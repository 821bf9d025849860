"""Rewrite a Llama-family model smaller: slice linears, drop blocks, update the config.

Supported blocks hold ``q_proj, k_proj, v_proj, o_proj`` and ``up_proj, down_proj`` (``gate_proj``
optional) as ``nn.Linear``: Llama, Mistral, Qwen2/3, SmolLM, Gemma and their kin. Every block
loses the same number of units, so the standard config fields express the result:
``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, with ``head_dim`` written
explicitly (the default hidden_size / num_attention_heads would change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from presso.compression.core.layout import Layout
from presso.compression.errors import UnsupportedModel

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass
class BlockParts:
    linears: dict[str, nn.Linear]  # leaf name -> module
    names: dict[str, str]  # leaf name -> full module name

    def __getitem__(self, leaf: str) -> nn.Linear:
        return self.linears[leaf]

    @property
    def gated(self) -> bool:
        return "gate_proj" in self.linears


def block_parts(block: nn.Module, block_name: str) -> BlockParts:
    found: dict[str, nn.Linear] = {}
    names: dict[str, str] = {}
    for n, m in block.named_modules():
        leaf = n.rsplit(".", 1)[-1]
        if leaf in ATTN + MLP and isinstance(m, nn.Linear):
            found[leaf] = m
            names[leaf] = f"{block_name}.{n}"
    missing = [x for x in ATTN + MLP[1:] if x not in found]
    if missing:
        raise UnsupportedModel(
            f"structured pruning needs Llama-style blocks (q/k/v/o_proj, up/down_proj as nn.Linear); "
            f"{block_name} lacks {missing}"
        )
    return BlockParts(found, names)


@dataclass
class Geometry:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int

    @property
    def group(self) -> int:  # query heads per KV head
        return self.heads // self.kv_heads


def geometry(config: Any, parts: BlockParts) -> Geometry:
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    hd = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    geo = Geometry(int(config.hidden_size), heads, kv, hd, int(config.intermediate_size))
    if (parts["q_proj"].out_features != heads * hd or parts["k_proj"].out_features != kv * hd
            or parts["up_proj"].out_features != geo.inter or heads % kv):
        raise UnsupportedModel("the config's head/intermediate sizes do not match the block's linear shapes")
    return geo


def _row_cost(m: nn.Linear) -> int:
    return m.in_features + (1 if m.bias is not None else 0)


def unit_params(parts: BlockParts, geo: Geometry) -> tuple[int, int]:
    """Parameters of one KV group and of one MLP channel."""
    q_rows = geo.group * geo.head_dim
    kv_rows = geo.head_dim * (_row_cost(parts["k_proj"]) + _row_cost(parts["v_proj"]))
    group = q_rows * _row_cost(parts["q_proj"]) + kv_rows + q_rows * parts["o_proj"].out_features
    channel = _row_cost(parts["up_proj"]) + parts["down_proj"].out_features
    if parts.gated:
        channel += _row_cost(parts["gate_proj"])
    return group, channel


def slice_linear_(m: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
                  weight: torch.Tensor | None = None) -> None:
    """Keep ``rows`` (outputs) and ``cols`` (inputs) of ``m``; ``weight`` replaces the sliced weight."""
    w = m.weight.data
    if weight is None:
        weight = w[rows] if rows is not None else w
        weight = weight[:, cols] if cols is not None else weight
    m.weight = nn.Parameter(weight.to(device=w.device, dtype=w.dtype).contiguous(), requires_grad=False)
    if m.bias is not None and rows is not None:
        m.bias = nn.Parameter(m.bias.data[rows].contiguous(), requires_grad=False)
    m.out_features, m.in_features = m.weight.shape


def drop_blocks_(model: nn.Module, layout: Layout, drop: list[int]) -> None:
    """Remove blocks ``drop`` from the block list; renumber ``layer_idx``; shrink the config."""
    cfg: Any = model.config
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, list) and len(types) == len(layout.blocks):
        cfg.layer_types = [t for i, t in enumerate(types) if i not in set(drop)]
    for i in sorted(set(drop), reverse=True):
        del layout.blocks[i]  # ModuleList renumbers the rest
    for i, block in enumerate(layout.blocks):
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                setattr(m, "layer_idx", i)  # noqa: B010 - attribute of transformers modules
    cfg.num_hidden_layers = len(layout.blocks)


def update_config_(config: Any, geo: Geometry, channels: int, groups: int) -> None:
    config.intermediate_size = geo.inter - channels
    config.num_key_value_heads = geo.kv_heads - groups
    config.num_attention_heads = geo.heads - groups * geo.group
    config.head_dim = geo.head_dim
