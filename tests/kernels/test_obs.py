"""OBS block column loop: the reference against a by-hand loop on the CPU, the Triton kernel
against the reference on CUDA, and GPTQ / SparseGPT end to end with either implementation."""

from __future__ import annotations

import pytest
import torch

from presso.compression.configs.quantization import QuantArgs
from presso.compression.core.quant import qrange
from presso.compression.core.stats import inverse_cholesky_upper
from presso.kernels.obs import obs_block, obs_block_ref


def _problem(n: int, b: int, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * b, b, generator=g) @ (torch.randn(b, b, generator=g) / b**0.5)
    h = 2 * x.t() @ x / x.shape[0] + 0.01 * torch.eye(b)
    u = inverse_cholesky_upper(h)
    w = torch.randn(n, b, generator=g)
    scale = (w.abs().amax(1, keepdim=True) / 7).expand(n, b).contiguous()
    zero = torch.zeros(n, b)
    return [t.to(device) for t in (w, u, scale, zero)]


def test_reference_prune_only_matches_by_hand_loop() -> None:
    w, u, _, _ = _problem(8, 12)
    prune = torch.rand(8, 12, generator=torch.Generator().manual_seed(1)) < 0.5
    q, err, codes = obs_block_ref(w, u, prune=prune)
    assert codes is None
    assert torch.all(q[prune] == 0)
    # by hand: after column i, every later column j moves by -e_i * U[i, j]
    cur = w.clone()
    for i in range(12):
        target = torch.where(prune[:, i], 0.0, cur[:, i])
        e = (cur[:, i] - target) / u[i, i]
        torch.testing.assert_close(err[:, i], e)
        torch.testing.assert_close(q[:, i], target)
        cur[:, i + 1 :] -= e[:, None] * u[i, i + 1 :][None, :]


def test_reference_quantizes_to_codes_in_range() -> None:
    w, u, scale, zero = _problem(16, 32)
    lo, hi = qrange(4)
    q, err, codes = obs_block_ref(w, u, scale, zero, lo, hi)
    assert codes is not None
    assert codes.min() >= lo and codes.max() <= hi
    assert torch.equal(codes, codes.round())
    torch.testing.assert_close(q, (codes - zero) * scale)
    # the rounding error compensation makes later columns differ from plain RTN
    assert not torch.equal(codes, torch.clamp(torch.round(w / scale), lo, hi))


def test_dispatch_rejects_unknown_impl_and_triton_on_cpu() -> None:
    w, u, _, _ = _problem(4, 8)
    with pytest.raises(ValueError):
        obs_block(w, u, impl="fast")
    with pytest.raises(RuntimeError):
        obs_block(w, u, impl="triton")


# --- CUDA: the Triton kernel --------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("n,b", [(64, 128), (1000, 128), (37, 96), (300, 256), (17, 1)])
@pytest.mark.parametrize("mode", ["quant", "prune", "both"])
def test_triton_matches_reference(n: int, b: int, mode: str) -> None:
    pytest.importorskip("triton")
    w, u, scale, zero = _problem(n, b, seed=n + b, device="cuda")
    lo, hi = qrange(4)
    prune = (torch.rand(n, b, device="cuda") < 0.3) if mode != "quant" else None
    s, z = (scale, zero) if mode != "prune" else (None, None)
    ref = obs_block(w, u, s, z, lo, hi, prune, impl="reference")
    got = obs_block(w, u, s, z, lo, hi, prune, impl="triton")
    if mode == "prune":
        torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    else:
        assert got[2] is not None and ref[2] is not None
        # FMA contraction may flip a code sitting on a rounding boundary; nothing more
        assert (got[2] != ref[2]).float().mean() < 1e-3
    same = (got[2] == ref[2]).all(1) if got[2] is not None else torch.ones(n, dtype=torch.bool, device="cuda")
    torch.testing.assert_close(got[1][same], ref[1][same], rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("group,act_order", [(128, False), (64, False), (96, False), (-1, False), (128, True)])
def test_gptq_with_kernel_matches_reference_loop(monkeypatch, group: int, act_order: bool) -> None:
    pytest.importorskip("triton")
    import presso.compression.engines.quantization.gptq.gptq_math as gm

    g = torch.Generator().manual_seed(3)
    x = torch.randn(4096, 384, generator=g) @ (torch.randn(384, 384, generator=g) / 20)
    h = (2 * x.t() @ x / x.shape[0]).cuda()
    w = torch.randn(256, 384, generator=g).cuda()
    scheme = QuantArgs(bits=4, group_size=group, symmetric=True, observer="minmax")
    fast, fast_stats = gm.quantize_weight(w, h, scheme, act_order=act_order)
    real = gm.obs_block
    monkeypatch.setattr(gm, "obs_block", lambda *a, **k: real(*a, **k, impl="reference"))
    slow, slow_stats = gm.quantize_weight(w, h, scheme, act_order=act_order)
    assert (fast.q != slow.q).float().mean() < 1e-3
    assert fast_stats["loss"] == pytest.approx(slow_stats["loss"], rel=1e-2)


# --- batched (experts of one shape: w [E, N, B] with u [E, B, B]) ---------------------------

def _batched(e: int, n: int, b: int, device: str = "cpu") -> list[torch.Tensor]:
    parts = [_problem(n, b, seed=10 + i, device=device) for i in range(e)]
    return [torch.stack([p[j] for p in parts]) for j in range(4)]


@pytest.mark.parametrize("mode", ["quant", "prune", "both"])
def test_batched_reference_equals_each_layer_alone(mode: str) -> None:
    w, u, scale, zero = _batched(3, 10, 12)
    lo, hi = qrange(4)
    prune = torch.rand(3, 10, 12, generator=torch.Generator().manual_seed(2)) < 0.3 if mode != "quant" else None
    s, z = (scale, zero) if mode != "prune" else (None, None)
    q, err, codes = obs_block_ref(w, u, s, z, lo, hi, prune)
    for e in range(3):
        alone = obs_block_ref(w[e], u[e], s[e] if s is not None else None, z[e] if z is not None else None, lo, hi,
                              prune[e] if prune is not None else None)
        torch.testing.assert_close(q[e], alone[0])
        torch.testing.assert_close(err[e], alone[1])
        if codes is not None:
            assert alone[2] is not None and torch.equal(codes[e], alone[2])


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("n,b", [(64, 128), (24, 96), (16, 256)])
def test_triton_batched_matches_reference(n: int, b: int) -> None:
    pytest.importorskip("triton")
    w, u, scale, zero = _batched(5, n, b, device="cuda")
    lo, hi = qrange(4)
    ref = obs_block(w, u, scale, zero, lo, hi, impl="reference")
    got = obs_block(w, u, scale, zero, lo, hi, impl="triton")
    assert got[2] is not None and ref[2] is not None and got[2].shape == (5, n, b)
    assert (got[2] != ref[2]).float().mean() < 1e-3
    for e in range(5):  # each layer's rows used its own factor: the 2-D kernel on that layer alone agrees
        alone = obs_block(w[e], u[e], scale[e], zero[e], lo, hi, impl="triton")
        assert alone[2] is not None and (got[2][e] != alone[2]).float().mean() < 1e-3
