"""Pure math of EoRA (Liu et al. 2024): a rank-r residual for ΔW = W_original - W_compressed fitted in the
eigenspace of the layer's input activations.

With H = X Xᵀ = Q Λ Qᵀ, the SVD ΔW Q Λ^{1/2} = U Σ Vᵀ truncated to rank r gives the residual
U_r Σ_r V_rᵀ Λ^{-1/2} Qᵀ, which equals U_r U_rᵀ ΔW (as U_rᵀ ΔW Q Λ^{1/2} = Σ_r V_rᵀ): the rank-r
projection of ΔW minimizing ‖(ΔW - B A) X‖_F. We build it in that form, so tiny eigenvalues of H
never get inverted, and the output error after is sqrt(Σ_{i>r} σ_i²) <= before = sqrt(Σ σ_i²):
never larger on the calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Residual:
    b: torch.Tensor  # [out, r]
    a: torch.Tensor  # [r, in]
    sigma: torch.Tensor  # singular values of ΔW Q Λ^{1/2} (output-space error spectrum)

    def output_errors(self) -> tuple[float, float]:
        """(‖ΔW X‖_F, ‖(ΔW - B A) X‖_F) on the calibration data."""
        e = self.sigma.double().pow(2)
        r = self.a.shape[0]
        return float(e.sum().sqrt()), float(e[r:].sum().sqrt())


def eora_residual(delta: torch.Tensor, h: torch.Tensor, rank: int) -> Residual:
    """Residual factors (float64) for ΔW [out, in] given the input covariance H [in, in]."""
    delta = delta.double()
    lam, q = torch.linalg.eigh((h.double() + h.double().t()) / 2)
    m = delta @ (q * lam.clamp_min(0).sqrt())
    u, sigma, _ = torch.linalg.svd(m, full_matrices=False)
    ur = u[:, :rank]
    a = ur.t() @ delta
    # balance the two factors: row j of A and column j of B get the same norm
    scale = a.norm(dim=1).clamp_min(1e-30).sqrt()
    return Residual(b=ur * scale, a=a / scale[:, None], sigma=sigma)
