"""Pure math of truncated SVD: ranks from a parameter ratio or a spectral energy, and balanced factors."""

from __future__ import annotations

import math

import torch

from presso.compression.errors import InvalidRecipe


def rank_for_ratio(out_f: int, in_f: int, ratio: float) -> int:
    """Largest r with r·(out + in) <= (1 - ratio)·out·in: the factors remove ``ratio`` of the parameters."""
    return math.floor((1.0 - ratio) * out_f * in_f / (out_f + in_f) + 1e-9)


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Smallest r whose top singular values keep at least ``energy`` of Σσ²."""
    e = s.double().pow(2)
    total = float(e.sum())
    if total == 0.0:
        return 1
    frac = e.cumsum(0) / total
    r = int(torch.searchsorted(frac, torch.tensor([energy - 1e-12], dtype=frac.dtype)).item()) + 1
    return min(r, s.numel())


def factor_dense_params(out_f: int, in_f: int, rank: int) -> tuple[int, int]:
    """(factorized, dense) weight parameter counts."""
    return rank * (out_f + in_f), out_f * in_f


def svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of a [out, in] weight in float32 (float64 for small matrices where precision is cheap)."""
    dtype = torch.float64 if w.numel() <= 1 << 18 else torch.float32
    return torch.linalg.svd(w.to(dtype), full_matrices=False)


def balanced_factors(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """B = U_r Σ_r^{1/2} [out, r], A = Σ_r^{1/2} V_rᵀ [r, in]: B·A = U_r Σ_r V_rᵀ, factors of equal scale."""
    root = s[:rank].clamp_min(0).sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def truncation_error(s: torch.Tensor, rank: int) -> float:
    """‖W - W_r‖_F = sqrt(Σ discarded σ²) (Eckart-Young)."""
    return float(s[rank:].double().pow(2).sum().sqrt())


def uniform_ranks(shapes: dict[str, tuple[int, int]], ratio: float) -> dict[str, int]:
    """``ratio`` in every layer (shapes: name -> (out, in)); fails when a layer would reach rank 0."""
    ranks = {}
    for name, (out_f, in_f) in shapes.items():
        r = rank_for_ratio(out_f, in_f, ratio)
        if r < 1:
            raise InvalidRecipe(f"ratio {ratio} removes every singular value of {name} [{out_f} x {in_f}]; "
                                "use a smaller ratio")
        ranks[name] = r
    return ranks


def round_rank(rank: int, multiple: int, cap: int) -> int:
    """``rank`` rounded down to a multiple of ``multiple`` (at least one multiple), at most ``cap``."""
    if multiple <= 1:
        return min(rank, cap)
    return min(max(multiple, rank // multiple * multiple), cap)
