"""The shared quantization core: ranges, group rule, observers, error bounds, config validation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from presso.compression.configs.quantization import GPTQConfig, QuantArgs, RTNConfig
from presso.compression.core.quant import (
    choose_params,
    dequantize_codes,
    expand_groups,
    num_groups,
    params_from_range,
    qrange,
    quantize_codes,
    quantize_rtn,
    resolve_group,
)


@pytest.mark.parametrize("bits", range(2, 9))
def test_qrange_is_signed_b_bits(bits):
    lo, hi = qrange(bits)
    assert hi - lo == 2**bits - 1 and lo == -(2 ** (bits - 1))


@pytest.mark.parametrize(("k", "g", "want"), [
    (576, 128, 96), (576, 64, 64), (96, 64, 48), (1536, 128, 128), (192, 64, 64),
    (97, 64, -1),  # prime: no divisor >= 16 -> per channel
    (64, 128, -1), (64, -1, -1), (64, 0, -1), (64, 64, 64),
])
def test_resolve_group(k, g, want):
    assert resolve_group(k, g) == want
    if want > 0:
        assert k % want == 0 and want <= g


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [-1, 16, 24])  # 24 does not divide 80: ragged last group
def test_minmax_rounding_error_at_most_half_a_step(bits, symmetric, group):
    torch.manual_seed(bits)
    w = torch.randn(12, 80) * torch.rand(12, 1) * 3
    args = QuantArgs(bits=bits, group_size=group, symmetric=symmetric, observer="minmax")
    scale, zero = choose_params(w, args)
    q = quantize_codes(w, scale, zero, bits, group)
    lo, hi = qrange(bits)
    assert q.min() >= lo and q.max() <= hi and torch.equal(q, q.round())
    err = (dequantize_codes(q, scale, zero, group) - w).abs()
    step = expand_groups(scale, 80, group)
    inside = (w / step + expand_groups(zero, 80, group) >= lo) & (w / step + expand_groups(zero, 80, group) <= hi)
    assert inside.float().mean() > 0.75  # the group extremes may sit half a step past the last code
    assert (err[inside] <= step[inside] / 2 * (1 + 1e-5) + 1e-7).all()
    assert (err <= step * (1 + 1e-5)).all()  # min/max covers the range: at most one step outside


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_observer_never_worse_than_minmax(symmetric):
    torch.manual_seed(0)
    w = torch.distributions.StudentT(3.0).sample((32, 128))
    errs = {}
    for obs in ("minmax", "mse"):
        args = QuantArgs(bits=3, group_size=32, symmetric=symmetric, observer=obs)
        errs[obs] = (quantize_rtn(w, args).dequantize() - w).pow(2).reshape(32, 4, 32).sum(-1)
    assert (errs["mse"] <= errs["minmax"] + 1e-6).all()
    assert errs["mse"].sum() < errs["minmax"].sum()


def test_quantized_weight_shapes_and_dtypes():
    w = torch.randn(10, 96)
    qw = quantize_rtn(w, QuantArgs(bits=4, group_size=48, symmetric=False))
    assert qw.q.dtype == torch.int8 and qw.q.shape == (10, 96)
    assert qw.scale.shape == (10, 2) and qw.zero is not None and qw.zero.shape == (10, 2)
    assert qw.zero.dtype == torch.int8 and not qw.symmetric
    assert num_groups(96, 48) == 2 and num_groups(100, 48) == 3
    sym = quantize_rtn(w, QuantArgs(bits=4, group_size=-1))
    assert sym.zero is None and sym.scale.shape == (10, 1) and sym.group_size == -1


def test_constant_and_zero_groups_do_not_blow_up():
    w = torch.zeros(4, 32)
    w[1] = 3.0
    for sym in (True, False):
        qw = quantize_rtn(w, QuantArgs(bits=4, group_size=16, symmetric=sym))
        assert torch.isfinite(qw.dequantize()).all()
        assert torch.equal(qw.dequantize()[0], w[0])  # an all-zero group stays exactly zero
        assert (qw.dequantize() - w).abs().max() <= 3.0 / 15 + 1e-6  # half a step of 3 / 7.5


@pytest.mark.parametrize("bad", [{"bits": 1}, {"bits": 9}, {"group_size": 4}, {"group_size": -2}])
def test_bad_schemes_rejected_at_validation(bad):
    with pytest.raises(ValidationError):
        RTNConfig(**bad)


def test_unknown_field_rejected():
    with pytest.raises(ValidationError):
        GPTQConfig(bits=4, dampening=0.1)


@pytest.mark.parametrize("symmetric", [True, False])
def test_scale_is_the_correctly_rounded_quotient(symmetric):
    # Group extremes sit exactly on a rounding tie (w / scale = +-7.5 at 4 bits), so the scale must
    # be the IEEE quotient on every device, never a multiply by a rounded reciprocal.
    w = torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    lo, hi = w.amin(1, keepdim=True).clamp_max(0), w.amax(1, keepdim=True).clamp_min(0)
    scale, _ = params_from_range(lo, hi, 4, symmetric)
    span = torch.maximum(lo.abs(), hi).double() / 7.5 if symmetric else (hi - lo).double() / 15
    assert torch.equal(scale, span.float())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("symmetric", [True, False])
def test_params_identical_on_cpu_and_cuda(symmetric):
    w = torch.randn(512, 576, generator=torch.Generator().manual_seed(1))
    args = QuantArgs(bits=4, group_size=64, symmetric=symmetric, observer="minmax")
    s_cpu, z_cpu = choose_params(w, args)
    s_gpu, z_gpu = choose_params(w.cuda(), args)
    assert torch.equal(s_cpu, s_gpu.cpu()) and torch.equal(z_cpu, z_gpu.cpu())
    assert torch.equal(quantize_rtn(w, args).q, quantize_rtn(w.cuda(), args).q)
