"""Pure mask functions: which weights to keep, given an importance score per weight.

Every function returns a boolean ``keep`` mask of the score's shape ([out, in]); the number of
pruned weights is exact (``round(sparsity * numel)`` per comparison group, ties broken by index),
so the achieved sparsity matches the target to within one weight per group.
"""

from __future__ import annotations

import torch

from presso.compression.errors import InvalidRecipe


def count_pruned(numel: int, sparsity: float) -> int:
    return min(numel, max(0, int(round(numel * sparsity))))


def keep_all_but_smallest(scores: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """Keep mask that drops the ``k`` smallest scores along ``dim`` (ties: lowest index first).

    A k-th value selection (linear time) rather than top-k, which is slow for k ~ n/2."""
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    thr = scores.kthvalue(k, dim=dim, keepdim=True).values
    below = scores < thr
    ties = scores == thr
    need = k - below.sum(dim=dim, keepdim=True)
    return ~(below | (ties & (ties.cumsum(dim=dim) <= need)))


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """One comparison group: the whole matrix."""
    k = count_pruned(scores.numel(), sparsity)
    return keep_all_but_smallest(scores.reshape(-1), k).reshape(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """One comparison group per output row (Wanda's choice): every row gets the same sparsity."""
    k = count_pruned(scores.shape[1], sparsity)
    return keep_all_but_smallest(scores, k, dim=1)


def check_nm(width: int, m: int, name: str) -> None:
    if width % m:
        raise InvalidRecipe(
            f"N:M pattern with M={m} needs the input width to be a multiple of M; "
            f"{name} has {width} input columns. Use another M or leave this layer out (ignore)."
        )


def nm_mask(scores: torch.Tensor, n_keep: int, m: int) -> torch.Tensor:
    """Keep the ``n_keep`` largest scores of every ``m`` consecutive input columns of each row."""
    rows, cols = scores.shape
    check_nm(cols, m, "this layer")
    groups = scores.reshape(rows, cols // m, m)
    return keep_all_but_smallest(groups, m - n_keep, dim=2).reshape(rows, cols)


EXACT_LIMIT = 1 << 27  # above this many weights the global threshold comes from a sample


def global_threshold(scores: list[torch.Tensor], sparsity: float, seed: int = 0) -> float:
    """Score below which weights are pruned so that ``sparsity`` of all weights go (one global group).

    Exact k-th value up to ``EXACT_LIMIT`` weights; above, the k-th value of a uniform sample of
    that size (the achieved sparsity is then within ~0.01% of the target).
    """
    total = sum(s.numel() for s in scores)
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for s in scores:
        flat = s.detach().reshape(-1).float().cpu()
        if total > EXACT_LIMIT:
            take = max(1, flat.numel() * EXACT_LIMIT // total)
            flat = flat[torch.randint(0, flat.numel(), (take,), generator=gen)]
        parts.append(flat)
    flat = torch.cat(parts)
    k = count_pruned(flat.numel(), sparsity)
    if k == 0:
        return float("-inf")
    return float(torch.kthvalue(flat, k).values)


def threshold_mask(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    return scores > threshold


def sparsity_of(w: torch.Tensor) -> float:
    return float((w == 0).sum()) / max(1, w.numel())


def is_nm(w: torch.Tensor, n_keep: int, m: int) -> bool:
    """True when every group of ``m`` consecutive input columns holds at most ``n_keep`` non-zeros."""
    rows, cols = w.shape
    if cols % m:
        return False
    return bool(((w != 0).reshape(rows, cols // m, m).sum(dim=2) <= n_keep).all())
