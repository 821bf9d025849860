"""The layers a step works on: the model's block layout and the Linear layers its targets/ignore select."""

from __future__ import annotations

from typing import Any

from torch import nn

from presso.compression.core.layout import Layout, find_layout, select_linears


def targeted_linears(model: nn.Module, cfg: Any) -> tuple[Layout, dict[int, dict[str, nn.Module]]]:
    """``(layout, {block index: {module name: linear layer}})`` for a step config with ``targets`` / ``ignore``."""
    layout = find_layout(model)
    return layout, select_linears(model, layout, cfg.targets, cfg.ignore)
