"""What the unstructured / N:M pruning engines share: early checks, calibration statistics, records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from presso.compression.configs.pruning import SparsityStep
from presso.compression.core.layout import get_weight, in_out, set_weight_
from presso.compression.core.sequential import BlockInputs, forward_block, observe_inputs
from presso.compression.core.stats import gram_
from presso.compression.engines.pruning.masks import check_nm, layer_mask, nm_mask, row_mask, sparsity_of
from presso.compression.errors import InvalidRecipe

Chosen = dict[int, dict[str, nn.Module]]


def preflight(chosen: Chosen, cfg: SparsityStep) -> None:
    """Fail before any work on shapes or options that cannot work together."""
    nm = cfg.nm
    if nm is not None and getattr(cfg, "allocation", "uniform") == "owl":
        raise InvalidRecipe(
            "allocation='owl' varies the sparsity per block, while an N:M pattern fixes it per group of M; "
            "use one or the other"
        )
    if nm is None:
        return
    for lins in chosen.values():
        for name, mod in lins.items():
            check_nm(in_out(mod)[0], nm[1], name)


def choose_mask(scores: torch.Tensor, cfg: SparsityStep, sparsity: float, per_row: bool) -> torch.Tensor:
    """Keep mask from importance scores: N:M when a pattern is set, else per row or per layer."""
    nm = cfg.nm
    if nm is not None:
        return nm_mask(scores, nm[0], nm[1])
    return row_mask(scores, sparsity) if per_row else layer_mask(scores, sparsity)


def apply_mask_(module: nn.Module, keep: torch.Tensor) -> None:
    w = get_weight(module)
    set_weight_(module, w.masked_fill(~keep.to(w.device), 0.0))  # +0.0, never -0.0


def layer_record(name: str, module: nn.Module, target: float, cfg: SparsityStep) -> dict[str, Any]:
    w = get_weight(module)
    return {
        "name": name,
        "target": round(target, 6),
        "sparsity": round(sparsity_of(w), 6),
        "pattern": cfg.pattern,
        "params": w.numel(),
    }


def summarize(layers: list[dict[str, Any]]) -> dict[str, Any]:
    total = sum(r["params"] for r in layers)
    zeros = sum(r["params"] * r["sparsity"] for r in layers)
    return {"sparsity": round(zeros / max(1, total), 6), "params_pruned": int(round(zeros)), "params_targeted": total}


class SquaredNorms:
    """Per module: sum over calibration tokens of x_j^2 for each input channel j (for ||X_j||_2)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, x: torch.Tensor) -> None:
        x = x.float()
        s = (x * x).sum(dim=0)
        self.sums[name] = self.sums[name] + s if name in self.sums else s

    def norm(self, name: str) -> torch.Tensor:
        return self.sums[name].sqrt()

    def drop(self, name: str) -> None:
        self.sums.pop(name, None)


class Hessians:
    """Per module: H = 2/n * sum x x^T over calibration tokens (the OBS / GPTQ Hessian)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, name: str, x: torch.Tensor) -> None:
        if name not in self.sums:
            self.sums[name] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
        gram_(self.sums[name], x)
        self.counts[name] = self.counts.get(name, 0) + x.shape[0]

    def pop(self, name: str) -> torch.Tensor:
        h = self.sums.pop(name)
        return h.mul_(2.0 / max(1, self.counts.pop(name)))

    def drop(self, name: str) -> None:
        self.sums.pop(name, None)
        self.counts.pop(name, None)


def observe(block: nn.Module, inputs: BlockInputs, lins: Mapping[str, nn.Module], acc: Any) -> None:
    """One forward of ``block`` over the calibration inputs, feeding ``acc`` each linear's input."""
    with observe_inputs(dict(lins), acc):
        forward_block(block, inputs)


def wanda_scores(module: nn.Module, col_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2: Wanda's importance of each weight."""
    w = get_weight(module).float()
    return w.abs() * col_norm.to(w.device).unsqueeze(0)
