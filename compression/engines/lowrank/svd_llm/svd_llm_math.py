"""Pure math of SVD-LLM (Wang et al. 2024): truncation-aware whitening and a global rank allocation.

With H = X Xᵀ the layer's input covariance and S its Cholesky factor (S Sᵀ = H), the SVD
W S = U Σ Vᵀ makes truncation exact in output space: ‖(W - W_r) X‖_F² = Σ_{i>r} σ_i² for
W_r = U_r Σ_r V_rᵀ S⁻¹. Since U_rᵀ W S = Σ_r V_rᵀ, the same W_r is U_r U_rᵀ W, so the factors
B = U_r Σ_r^{1/2}, A = Σ_r^{-1/2} U_rᵀ W need no inverse of S (nor of a badly conditioned H).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from presso.compression.errors import InvalidRecipe

MAX_DAMP_TRIES = 12


def whitening(h: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor S of H (float64), adding λ·mean(diag H)·I (λ = 1e-8, 1e-7, ...) until H is
    positive definite. Returns (S, the damping added)."""
    h = h.double()
    h = (h + h.t()) / 2
    scale = float(h.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    damp = 0.0
    for attempt in range(MAX_DAMP_TRIES):
        s, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            return s, damp
        damp = scale * 10.0 ** (attempt - 8)
    raise ValueError("input covariance is not positive definite even after damping")


def whitened_svd(w: torch.Tensor, s_factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, σ) of W·S in float64."""
    u, sigma, _ = torch.linalg.svd(w.double() @ s_factor, full_matrices=False)
    return u, sigma


def whitened_factors(
    w: torch.Tensor, u: torch.Tensor, sigma: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """B [out, r], A [r, in] with B·A = U_r Σ_r V_rᵀ S⁻¹ = U_r U_rᵀ W (float64)."""
    ur = u[:, :rank]
    root = sigma[:rank].clamp_min(sigma[0] * 1e-12 if sigma.numel() else 1e-12).sqrt()
    a = (ur.t() @ w.double()) / root[:, None]
    return ur * root, a


@dataclass
class LayerSpectrum:
    sigma2: torch.Tensor  # whitened squared singular values, descending (CPU float64)
    out_features: int
    in_features: int

    @property
    def max_rank(self) -> int:
        """Largest rank that still stores fewer parameters than the dense layer (at least 1)."""
        m, n = self.out_features, self.in_features
        return max(1, min(self.sigma2.numel(), (m * n - 1) // (m + n)))


def allocate_ranks(spectra: dict[str, LayerSpectrum], ratio: float) -> dict[str, int]:
    """Per-layer ranks removing ``ratio`` of the layers' (dense) weight parameters in total.

    Every layer starts at its largest useful rank; then singular values are dropped globally in
    order of increasing σ²/(Σσ² · (out + in)) — the share of that layer's output energy lost per
    parameter saved — until the budget is met. Each layer keeps at least rank 1.
    """
    budget = (1.0 - ratio) * sum(sp.out_features * sp.in_features for sp in spectra.values())
    names = list(spectra)
    ranks = {n: spectra[n].max_rank for n in names}
    cost = sum(ranks[n] * (spectra[n].out_features + spectra[n].in_features) for n in names)
    if cost <= budget:
        return ranks
    scores, owner, saving = [], [], []
    for k, n in enumerate(names):
        sp = spectra[n]
        width = sp.out_features + sp.in_features
        cand = sp.sigma2[1:ranks[n]].double() / (float(sp.sigma2.sum()) or 1.0) / width
        scores.append(cand)
        owner.append(torch.full((cand.numel(),), k, dtype=torch.long))
        saving.append(torch.full((cand.numel(),), float(width), dtype=torch.float64))
    order = torch.argsort(torch.cat(scores), stable=True)
    saved = torch.cat(saving)[order].cumsum(0)
    need = cost - budget
    k = int(torch.searchsorted(saved, torch.tensor([need], dtype=saved.dtype)).item()) + 1
    if k > saved.numel():
        raise InvalidRecipe(f"ratio {ratio} cannot be met even at rank 1 in every targeted layer")
    dropped = torch.bincount(torch.cat(owner)[order][:k], minlength=len(names))
    return {n: ranks[n] - int(dropped[i]) for i, n in enumerate(names)}

