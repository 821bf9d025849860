"""HQQ and AWQ math on small random matrices."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from presso.compression.configs.quantization import QuantArgs
from presso.compression.core.quant import qrange, quantize_rtn
from presso.compression.engines.quantization.awq.awq_math import awq_scales, scale_hessian, search_scales
from presso.compression.engines.quantization.awq.fold import fold_
from presso.compression.engines.quantization.hqq.hqq_math import HQQParams, optimize_zero, quantize_hqq, shrink_lp


def _heavy(n: int = 64, k: int = 128, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.distributions.StudentT(4.0).sample((n, k))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_hqq_weight_error_not_above_rtn(bits, symmetric):
    w = _heavy(seed=bits)
    scheme = QuantArgs(bits=bits, group_size=32, symmetric=symmetric)
    hqq = quantize_hqq(w, scheme)
    err = (hqq.dequantize() - w).norm()
    for observer in ("minmax", "mse"):
        rtn = quantize_rtn(w, scheme.model_copy(update={"observer": observer})).dequantize()
        assert err <= (rtn - w).norm() * (1 + 1e-6)
    minmax = quantize_rtn(w, scheme.model_copy(update={"observer": "minmax"})).dequantize()
    if bits <= 4:
        assert err < 0.99 * (minmax - w).norm()
    lo, hi = qrange(bits)
    if symmetric:
        assert hqq.zero is None
    else:  # integer zero points in the code range: the artifact stays pack-quantized
        assert hqq.zero.dtype == torch.int8 and hqq.zero.min() >= lo and hqq.zero.max() <= hi
    assert hqq.q.min() >= lo and hqq.q.max() <= hi and hqq.scale.shape == (64, 4)


def test_hqq_zero_step_lowers_l1_error():
    w = _heavy().reshape(-1, 32)
    lo, hi = qrange(3)
    s = (w.amax(1, keepdim=True) - w.amin(1, keepdim=True)) / (hi - lo)
    z0 = lo - w.amin(1, keepdim=True) / s

    def l1(z):
        q = torch.clamp(torch.round(w / s + z), lo, hi)
        return (w - (q - z) * s).abs().mean(1)

    z = optimize_zero(w, s, z0, 3, HQQParams())
    assert (l1(z) <= l1(z0) + 1e-7).all() and l1(z).mean() < 0.97 * l1(z0).mean()


def test_shrink_operator():
    x = torch.linspace(-3, 3, 61)
    out = shrink_lp(x, beta=2.0, p=1.0)
    assert torch.equal(out[x.abs() <= 0.5], torch.zeros_like(out[x.abs() <= 0.5]))
    assert (out.abs() <= x.abs()).all()
    assert (shrink_lp(x, beta=10.0, p=0.7).abs() <= x.abs()).all()


def _outlier_inputs(n: int = 2048, k: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, k, generator=g)
    x[:, :4] *= 30  # outlier channels, as in LLM activations
    return x


def test_awq_scales_reduce_output_error_over_rtn():
    x = _outlier_inputs()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    h = 2 * x.t() @ x / x.shape[0]
    scheme = QuantArgs(bits=3, group_size=32)
    s, alpha, errors = search_scales([w], [scheme], h, x.abs().mean(0), grid=10)
    assert alpha > 0 and min(errors) < errors[0]
    awq = quantize_rtn(w * s, scheme).dequantize() / s
    rtn = quantize_rtn(w, scheme).dequantize()
    assert (x @ (awq - w).t()).norm() < 0.9 * (x @ (rtn - w).t()).norm()
    x_scaled = x / s
    torch.testing.assert_close(scale_hessian(h, s), 2 * x_scaled.t() @ x_scaled / x.shape[0], rtol=1e-4, atol=1e-3)
    s0 = awq_scales(x.abs().mean(0), 0.5)
    assert torch.isclose(s0.max() * s0.min(), torch.tensor(1.0))


@pytest.mark.parametrize("producer", ["norm", "linear"])
def test_fold_keeps_the_function(producer):
    torch.manual_seed(0)
    first = nn.LayerNorm(16) if producer == "norm" else nn.Linear(8, 16)
    nn.init.normal_(first.weight)
    nn.init.normal_(first.bias)
    act = nn.Identity() if producer == "norm" else nn.ReLU()  # ReLU is positively homogeneous
    second = nn.Linear(16, 4)
    x = torch.randn(5, 16 if producer == "norm" else 8)
    ref = second(act(first(x)))
    fold_(first, producer, [second], torch.rand(16) + 0.5)
    torch.testing.assert_close(second(act(first(x))), ref, rtol=1e-5, atol=1e-5)
