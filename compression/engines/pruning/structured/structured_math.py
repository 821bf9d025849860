"""Pure math of width pruning: unit importance, how many units go, and the least-squares refit.

A *unit* is one MLP intermediate channel, or one KV group of attention (a KV head with the query
heads that share it; with plain multi-head attention a group is one head). Removing a unit
removes its additive contribution to the block's residual output: channel c adds W_down[:, c] a_c,
group g adds W_o[:, S_g] x_{S_g}. Its importance is the squared norm of that contribution over
the calibration tokens, ||W[:, S] X_S||_F^2 = trace(W_S G_SS W_S^T) with G = X^T X of the output
projection's input: calibration-weighted, exact for each unit alone, no gradients.

After removal the output projection is refit by least squares on the kept inputs,
W' = W G[:, K] (G[K, K] + damp I)^-1, which best reproduces the unpruned block's output from
what is left (kept units' activations do not change when others go).
"""

from __future__ import annotations

import torch


def unit_importance(w_out: torch.Tensor, gram: torch.Tensor, unit_cols: int) -> torch.Tensor:
    """Importance of each unit: w_out [d, n*unit_cols], gram [n*unit_cols, n*unit_cols] -> [n]."""
    d, cols = w_out.shape
    n = cols // unit_cols
    w = w_out.float().reshape(d, n, unit_cols).permute(1, 0, 2)  # [n, d, u]
    g = gram.float().reshape(n, unit_cols, n, unit_cols).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [n, u, u]
    return torch.einsum("ndu,nuv,ndv->n", w, g, w)


def keep_units(importance: torch.Tensor, remove: int) -> torch.Tensor:
    """Sorted indices of the units kept after dropping the ``remove`` least important."""
    n = importance.numel()
    order = torch.argsort(importance, descending=True, stable=True)
    return torch.sort(order[: n - remove]).values


def unit_columns(kept_units: torch.Tensor, unit_cols: int) -> torch.Tensor:
    """Column indices covered by the kept units."""
    base = kept_units.unsqueeze(1) * unit_cols
    return (base + torch.arange(unit_cols, device=kept_units.device)).reshape(-1)


def refit_output(w_out: torch.Tensor, gram: torch.Tensor, kept_cols: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Least-squares W' [d, |K|] with W' x_K ~ W x over the calibration inputs."""
    w = w_out.float()
    g = gram.float()
    g_kk = g[kept_cols][:, kept_cols]
    reg = damp * float(torch.diag(g_kk).mean().clamp_min(1e-12))
    g_kk = g_kk + reg * torch.eye(g_kk.shape[0], device=g.device, dtype=g.dtype)
    rhs = w @ g[:, kept_cols]  # [d, |K|]
    sol = torch.linalg.solve(g_kk, rhs.t())  # g_kk symmetric: (rhs g_kk^-1)^T = g_kk^-1 rhs^T
    return sol.t()


def plan_counts(*, inter: int, groups: int, group_params: int, channel_params: int, block_params: int,
                ratio: float | None, mlp_ratio: float | None, head_ratio: float | None) -> tuple[int, int]:
    """(channels, KV groups) removed in every block.

    ``ratio``: attention gives up as many whole groups as fit in ``ratio`` of its own parameters
    (rounded down: a group is a coarse unit), and MLP channels make up the rest of
    ``ratio * block_params``. Per-component ratios round to the nearest unit.
    """
    if ratio is None:
        return round((mlp_ratio or 0.0) * inter), round((head_ratio or 0.0) * groups)
    n_groups = int(ratio * groups + 1e-9)
    budget = ratio * block_params - n_groups * group_params
    return max(0, round(budget / channel_params)), n_groups
