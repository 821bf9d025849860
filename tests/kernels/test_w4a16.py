"""W4A16 / W8A16: the pure-torch reference on the CPU, the Triton kernels against it on CUDA."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from presso.kernels.w4a16 import reference as ref


def _rand_q(n: int, k: int, bits: int, gen: torch.Generator) -> torch.Tensor:
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    return torch.randint(lo, hi, (n, k), generator=gen, dtype=torch.int8)


# --- CPU: the reference ----------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("k", [32, 100, 37, 256])
def test_pack_unpack_bit_exact_with_compressed_tensors(bits: int, k: int) -> None:
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    gen = torch.Generator().manual_seed(bits * 1000 + k)
    q = _rand_q(9, k, bits, gen)
    theirs = helpers.pack_to_int32(q, bits)
    assert torch.equal(ref.pack_int(q, bits), theirs)
    assert torch.equal(ref.unpack_int(theirs, bits, k), q)
    assert torch.equal(helpers.unpack_from_int32(theirs, bits, torch.Size((9, k))), q)


def test_unpack_4bit_layout_by_hand() -> None:
    # value k sits in bits 4k..4k+3 of its row's bit stream, stored offset by +8.
    q = torch.tensor([[-8, -7, 0, 7, 1, 2, 3, 4, -1]], dtype=torch.int8)
    u = [int(v) + 8 for v in q[0]]
    w0 = sum(v << (4 * j) for j, v in enumerate(u[:8]))
    w0 = w0 - 2**32 if w0 >= 2**31 else w0
    packed = torch.tensor([[w0, u[8]]], dtype=torch.int32)
    assert torch.equal(ref.pack_int(q, 4), packed)
    assert torch.equal(ref.unpack_int(packed, 4, 9), q)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("k", [64, 1000, 130])
def test_planar_repack_round_trip(bits: int, k: int) -> None:
    gen = torch.Generator().manual_seed(k + bits)
    q = _rand_q(5, k, bits, gen)
    planar = ref.planar_repack(ref.pack_int(q, bits), bits, k)
    blk = ref.planar_block(bits)
    assert planar.shape == (5, -(-k // blk) * blk * bits // 32)
    assert torch.equal(ref.planar_unpack(planar, bits, k), q)
    # slot j of word r in block b holds k = b*blk + j*16 + r
    words = planar.to(torch.int64) & 0xFFFFFFFF
    j, r = 1, 3
    slot = int((words[0, r] >> (j * bits)) & ((1 << bits) - 1)) - (1 << (bits - 1))
    assert slot == int(q[0, j * 16 + r])


def _naive_dequant(q, scale, zp, group_size):
    n, k = q.shape
    w = torch.empty(n, k, dtype=torch.float64)
    for i in range(n):
        for c in range(k):
            g = 0 if scale.shape[1] == 1 else c // group_size
            z = 0.0 if zp is None else float(zp[i, g])
            w[i, c] = (float(q[i, c]) - z) * float(scale[i, g])
    return w


@pytest.mark.parametrize(
    "bits,k,group_size,asym",
    [
        (4, 40, 16, False),
        (4, 40, 16, True),
        (4, 37, 8, True),
        (8, 50, 16, False),
        (3, 33, 8, True),
        (4, 24, None, True),
    ],
)
def test_dequantize_matches_naive_loop(bits, k, group_size, asym) -> None:
    gen = torch.Generator().manual_seed(k)
    n = 6
    g = 1 if group_size is None else -(-k // group_size)  # ragged last group when k % g != 0
    q = _rand_q(n, k, bits, gen)
    scale = torch.rand(n, g, generator=gen) * 0.1 + 0.01
    zp = _rand_q(n, g, bits, gen) if asym else None
    want = _naive_dequant(q, scale, zp, group_size)
    packed = ref.pack_int(q, bits)
    got = ref.dequantize(packed, scale, zp, bits, group_size, k, dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    if asym:  # the artifact's form: zero points packed along the output dim
        zp_packed = ref.pack_int(zp.t().contiguous(), bits).t().contiguous()
        got2 = ref.dequantize(packed, scale, zp_packed, bits, group_size, k, dtype=torch.float64)
        torch.testing.assert_close(got2, want, rtol=1e-6, atol=1e-7)


def test_ragged_group_uses_short_last_group() -> None:
    k, gs = 20, 8  # groups [0,8) [8,16) [16,20)
    q = torch.ones(1, k, dtype=torch.int8)
    scale = torch.tensor([[1.0, 2.0, 3.0]])
    w = ref.dequantize(ref.pack_int(q, 4), scale, None, 4, gs, k, dtype=torch.float32)
    assert w[0].tolist() == [1.0] * 8 + [2.0] * 8 + [3.0] * 4
    with pytest.raises(ValueError):
        ref.dequantize(ref.pack_int(q, 4), scale[:, :2], None, 4, gs, k)


def test_matmul_ref_matches_dense() -> None:
    gen = torch.Generator().manual_seed(7)
    n, k, gs = 24, 96, 32
    q = _rand_q(n, k, 4, gen)
    scale = torch.rand(n, k // gs, generator=gen) * 0.05
    x = torch.randn(2, 3, k, generator=gen)
    y = ref.w4a16_matmul_ref(x, ref.pack_int(q, 4), scale, None, 4, gs)
    w = _naive_dequant(q, scale, None, gs).float()
    assert y.shape == (2, 3, n)
    torch.testing.assert_close(y, x @ w.t(), rtol=1e-5, atol=1e-5)


def test_public_entry_point_falls_back_on_cpu() -> None:
    from presso.kernels import w4a16

    gen = torch.Generator().manual_seed(3)
    q = _rand_q(16, 64, 4, gen)
    scale = (torch.rand(16, 2, generator=gen) * 0.05).to(torch.bfloat16)
    x = torch.randn(4, 64, generator=gen).to(torch.bfloat16)
    packed = ref.pack_int(q, 4)
    y = w4a16.w4a16_matmul(x, packed, scale, None, 4, 32)
    assert torch.equal(y, ref.w4a16_matmul_ref(x, packed, scale, None, 4, 32))


def test_kernels_import_without_triton() -> None:
    code = ("import sys; sys.modules['triton'] = None; "
            "from presso.kernels.support import triton_available; print(triton_available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("False", "True")


# --- CUDA: Triton against the reference ----------------------------------------------


def _gpu():
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from presso.kernels.w4a16 import triton as tk

    return tk


def _rel_err(y: torch.Tensor, want: torch.Tensor) -> float:
    assert torch.isfinite(y).all()
    return float((y.float() - want.float()).norm() / want.float().norm())


def _make(n, k, bits, gs, asym, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    g = 1 if gs is None else -(-k // gs)
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    q = torch.randint(lo, hi, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, g, generator=gen, device="cuda") * 0.02 + 0.002).to(dtype)
    zp = None
    if asym:
        z = torch.randint(-2, 2, (n, g), generator=gen, device="cuda", dtype=torch.int8)
        zp = ref.pack_int(z.t().contiguous(), bits).t().contiguous()
    return ref.pack_int(q, bits), scale, zp


BENCH_SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]  # (K, N)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64])
@pytest.mark.parametrize("k,n", BENCH_SHAPES)
def test_triton_matches_reference_bench_shapes(m: int, k: int, n: int) -> None:
    tk = _gpu()
    packed, scale, zp = _make(n, k, 4, 128, False, torch.bfloat16, seed=k + n + m)
    pw = tk.prepare_weight(packed, scale, zp, 4, 128, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    y = tk.w4a16_matmul_prepared(x, pw, autotune=True)
    want = ref.w4a16_matmul_ref(x, packed, scale, zp, 4, 128)
    assert _rel_err(y, want) <= 1e-2
    assert torch.equal(tk.w4a16_matmul_prepared(x, pw, autotune=True), y)  # deterministic split-K


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64, 5])
@pytest.mark.parametrize(
    "n,k,bits,gs,asym,dtype",
    [
        (768, 1000, 4, 128, False, torch.bfloat16),  # ragged last group, K padded
        (300, 1000, 4, 128, True, torch.bfloat16),  # zero points, N not a tile multiple
        (512, 1024, 4, 64, False, torch.bfloat16),  # group < planar block: per-slice scales
        (512, 992, 4, 32, True, torch.float16),  # ragged, fp16 activations
        (512, 2048, 8, 128, False, torch.bfloat16),  # W8A16
        (384, 1000, 8, 64, True, torch.bfloat16),  # W8A16 asymmetric, ragged
        (256, 512, 4, None, False, torch.bfloat16),  # channel-wise
    ],
)
def test_triton_matches_reference_formats(m, n, k, bits, gs, asym, dtype) -> None:
    tk = _gpu()
    packed, scale, zp = _make(n, k, bits, gs, asym, dtype, seed=n * 7 + k + m)
    pw = tk.prepare_weight(packed, scale, zp, bits, gs, k)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    y = tk.w4a16_matmul_prepared(x, pw, autotune=False)
    want = ref.w4a16_matmul_ref(x, packed, scale, zp, bits, gs)
    assert _rel_err(y, want) <= 1e-2
    if m == 1:  # the alternative GEMV kernel computes the same thing
        assert _rel_err(tk.w4a16_matmul_prepared(x, pw, autotune=False, gemv="loop"), want) <= 1e-2


@pytest.mark.gpu
def test_public_entry_point_uses_triton_on_cuda() -> None:
    tk = _gpu()
    from presso.kernels import w4a16

    packed, scale, zp = _make(512, 1024, 4, 128, False, torch.float16, seed=11)
    x = torch.randn(3, 2, 1024, device="cuda", dtype=torch.float16)  # fp16: not the tensor-core kernel's
    tk.last_launch.clear()
    y = w4a16.w4a16_matmul(x, packed, scale, zp, 4, 128)
    assert "gemm" in tk.last_launch
    assert y.shape == (3, 2, 512)
    assert _rel_err(y, ref.w4a16_matmul_ref(x, packed, scale, zp, 4, 128)) <= 1e-2
    # unsupported group size falls back to the reference
    packed, scale, zp = _make(64, 100, 4, 20, False, torch.bfloat16, seed=12)
    x = torch.randn(1, 100, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(
        w4a16.w4a16_matmul(x, packed, scale, zp, 4, 20), ref.w4a16_matmul_ref(x, packed, scale, zp, 4, 20)
    )
