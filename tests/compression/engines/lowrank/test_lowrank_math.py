"""Pure low-rank math on small random matrices."""

import pytest
import torch

from presso.compression.engines.lowrank.eora.eora_math import eora_residual
from presso.compression.engines.lowrank.svd.svd_math import (
    balanced_factors,
    rank_for_energy,
    rank_for_ratio,
    round_rank,
    svd,
    truncation_error,
    uniform_ranks,
)
from presso.compression.engines.lowrank.svd_llm.svd_llm_math import (
    LayerSpectrum,
    allocate_ranks,
    whitened_factors,
    whitened_svd,
    whitening,
)
from presso.compression.errors import InvalidRecipe


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def correlated_inputs(tokens=512, dim=48, seed=1):
    """X [tokens, dim] with a few dominant, correlated directions (as activations have)."""
    g = _gen(seed)
    mix = torch.randn(dim, dim, generator=g, dtype=torch.float64) * torch.logspace(0, -3, dim, dtype=torch.float64)
    return torch.randn(tokens, dim, generator=g, dtype=torch.float64) @ mix


def test_svd_error_is_the_discarded_singular_values():
    w = torch.randn(40, 64, generator=_gen(), dtype=torch.float64)
    u, s, vh = svd(w)
    for r in (1, 7, 20, 40):
        b, a = balanced_factors(u, s, vh, r)
        assert b.shape == (40, r) and a.shape == (r, 64)
        err = float((w - b @ a).norm())
        assert err == pytest.approx(float(s[r:].pow(2).sum().sqrt()), rel=1e-9, abs=1e-9)
        assert err == pytest.approx(truncation_error(s, r), rel=1e-9, abs=1e-9)


def test_ranks_from_ratio_and_energy():
    assert rank_for_ratio(100, 100, 0.2) == 40  # 40 * 200 = 8000 = 0.8 * 10000
    r = rank_for_ratio(576, 1536, 0.3)
    assert r * (576 + 1536) <= 0.7 * 576 * 1536 < (r + 1) * (576 + 1536)
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])
    assert rank_for_energy(s, 9 / 14.25) == 1
    assert rank_for_energy(s, 0.95) == 3
    assert rank_for_energy(s, 1.0) == 4
    assert round_rank(70, 32, 96) == 64 and round_rank(10, 32, 96) == 32 and round_rank(70, 1, 50) == 50
    with pytest.raises(InvalidRecipe, match="removes every"):
        uniform_ranks({"x": (4, 4)}, 0.6)


def test_whitened_truncation_beats_plain_truncation_on_correlated_inputs():
    w = torch.randn(32, 48, generator=_gen(2), dtype=torch.float64)
    x = correlated_inputs()
    h = x.t() @ x
    s_factor, damp = whitening(h)
    assert damp == 0.0 and torch.allclose(s_factor @ s_factor.t(), h)
    u, sigma = whitened_svd(w, s_factor)
    for r in (4, 8, 16):
        b, a = whitened_factors(w, u, sigma, r)
        err_white = float(((w - b @ a) @ x.t()).norm())
        assert err_white == pytest.approx(float(sigma[r:].pow(2).sum().sqrt()), rel=1e-6)
        pu, ps, pvh = svd(w)
        pb, pa = balanced_factors(pu, ps, pvh, r)
        err_plain = float(((w - pb @ pa) @ x.t()).norm())
        assert err_white < 0.7 * err_plain


def test_whitening_regularizes_a_singular_covariance():
    x = correlated_inputs(tokens=8, dim=48)  # rank 8 < 48: X Xᵀ is singular
    s_factor, damp = whitening(x.t() @ x)
    assert damp > 0 and torch.isfinite(s_factor).all()
    w = torch.randn(16, 48, generator=_gen(3), dtype=torch.float64)
    u, sigma = whitened_svd(w, s_factor)
    b, a = whitened_factors(w, u, sigma, 8)
    assert torch.isfinite(b).all() and torch.isfinite(a).all()
    assert float(((w - b @ a) @ x.t()).norm()) < 1e-3 * float((w @ x.t()).norm())


def test_global_allocation_meets_the_budget_and_favours_steep_spectra():
    flat = LayerSpectrum(torch.ones(32, dtype=torch.float64), 32, 64)
    steep = LayerSpectrum(torch.logspace(0, -6, 32, dtype=torch.float64), 32, 64)
    ranks = allocate_ranks({"flat": flat, "steep": steep}, 0.5)
    dense = 2 * 32 * 64
    assert sum(r * (32 + 64) for r in ranks.values()) <= 0.5 * dense
    assert ranks["flat"] > ranks["steep"] >= 1
    with pytest.raises(InvalidRecipe):
        allocate_ranks({"flat": flat}, 0.99)


def test_eora_residual_never_increases_the_output_error():
    x = correlated_inputs(seed=4)
    h = x.t() @ x
    for seed in range(3):
        delta = torch.randn(24, 48, generator=_gen(10 + seed), dtype=torch.float64) * 0.01
        before = float((delta @ x.t()).norm())
        last = before
        for r in (1, 4, 12, 24):
            res = eora_residual(delta, h, r)
            after = float(((delta - res.b @ res.a) @ x.t()).norm())
            assert after <= last + 1e-9
            assert (before, after) == pytest.approx(res.output_errors(), rel=1e-6)
            last = after


def test_eora_matches_the_eigenspace_formula():
    """B·A = U_r Σ_r V_rᵀ Λ^{-1/2} Qᵀ (the paper's form) when H is full rank."""
    x = correlated_inputs(seed=5)
    h = x.t() @ x
    delta = torch.randn(24, 48, generator=_gen(6), dtype=torch.float64)
    lam, q = torch.linalg.eigh(h)
    u, s, vh = torch.linalg.svd(delta @ q @ torch.diag(lam.sqrt()), full_matrices=False)
    r = 6
    paper = u[:, :r] @ torch.diag(s[:r]) @ vh[:r] @ torch.diag(lam.rsqrt()) @ q.t()
    res = eora_residual(delta, h, r)
    assert torch.allclose(res.b @ res.a, paper, atol=1e-6 * float(paper.abs().max()))
