import torch

from presso.compression.configs.quantization import QuantArgs
from presso.compression.engines.pruning.masks import is_nm, nm_mask, row_mask
from presso.compression.engines.pruning.sparsegpt.sparsegpt_math import sparsegpt_prune


def _correlated_inputs(n=2048, k=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g)
    mix = torch.eye(k) + 0.4 * torch.randn(k, k, generator=g) / k**0.5
    x = z @ mix
    x[:, :6] *= 15.0  # outlier channels
    return x


def _out_err(w, w_hat, x):
    return float(((w - w_hat) @ x.t()).pow(2).sum())


def _three(pattern):
    torch.manual_seed(0)
    x = _correlated_inputs()
    w = torch.randn(96, 128)
    h = 2 * x.t() @ x / x.shape[0]
    norms = x.norm(dim=0)
    if pattern is None:
        mag = w * row_mask(w.abs(), 0.5)
        wanda = w * row_mask(w.abs() * norms, 0.5)
        sgpt = sparsegpt_prune(w, h, sparsity=0.5, block_size=32).weight
    else:
        mag = w * nm_mask(w.abs(), *pattern)
        wanda = w * nm_mask(w.abs() * norms, *pattern)
        sgpt = sparsegpt_prune(w, h, sparsity=0.5, nm=pattern, block_size=32).weight
    return [_out_err(w, v, x) for v in (sgpt, wanda, mag)], sgpt


def test_sparsegpt_beats_wanda_beats_magnitude_unstructured():
    (e_sgpt, e_wanda, e_mag), sgpt = _three(None)
    assert e_sgpt <= e_wanda <= e_mag
    assert abs(float((sgpt == 0).float().mean()) - 0.5) < 1e-3


def test_sparsegpt_beats_wanda_beats_magnitude_2of4():
    (e_sgpt, e_wanda, e_mag), sgpt = _three((2, 4))
    assert e_sgpt <= e_wanda <= e_mag
    assert is_nm(sgpt, 2, 4)


def test_joint_mode_keeps_the_mask_and_the_codes():
    torch.manual_seed(0)
    x = _correlated_inputs(k=128)
    w = torch.randn(64, 128)
    h = 2 * x.t() @ x / x.shape[0]
    args = QuantArgs(bits=4, group_size=32, symmetric=True)
    res = sparsegpt_prune(w, h, sparsity=0.5, block_size=64, qargs=args)
    qw = res.quantized
    assert qw is not None and qw.scale.shape == (64, 4)
    assert torch.equal(qw.dequantize(), res.weight)
    assert float((res.weight == 0).float().mean()) >= 0.5  # every pruned weight stays exactly zero
    assert int(qw.q.abs().max()) <= 8
    plain = sparsegpt_prune(w, h, sparsity=0.5, block_size=64).weight
    assert _out_err(w, res.weight, x) < 3 * _out_err(w, plain, x) + 1e-6
