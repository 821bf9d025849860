"""The layers a step works on: the model's block layout and the Linear layers its targets/ignore select."""

from __future__ import annotations

from typing import Any

from torch import nn

from presso.compression.core.experts import reset_counts_, route_all_
from presso.compression.core.layout import Layout, find_layout, select_linears


def targeted_linears(model: nn.Module, cfg: Any) -> tuple[Layout, dict[int, dict[str, nn.Module]]]:
    """``(layout, {block index: {module name: linear layer}})`` for a step config with ``targets`` / ``ignore``.

    Fused MoE experts are unfused into per-expert linears (find_layout) and their routed-token counts
    restart at zero, so a step's calibration counts the tokens routed to each expert in its own pass; with
    ``expert_calibration: "all"`` every token reaches every expert's statistics."""
    layout = find_layout(model)
    reset_counts_(model)
    route_all_(model, getattr(cfg, "expert_calibration", "routed") == "all")  # until the step ends (registry)
    return layout, select_linears(model, layout, cfg.targets, cfg.ignore)
