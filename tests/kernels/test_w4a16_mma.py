"""The tensor-core W4A16 kernel (kernels/w4a16/mma.cu): its layout on the CPU, the kernel on CUDA."""

from __future__ import annotations

import pytest
import torch

from presso.kernels.w4a16 import reference as ref

# --- CPU: the layout, and the kernel's fragment arithmetic emulated ----------------------


@pytest.mark.parametrize("n,k", [(16, 64), (300, 1000), (33, 576), (5, 7)])
def test_mma_repack_round_trip(n: int, k: int) -> None:
    q = torch.randint(-8, 8, (n, k), generator=torch.Generator().manual_seed(n + k), dtype=torch.int8)
    words = ref.mma_repack(ref.pack_int(q, 4), k)
    assert words.shape == (-(-n // 16), -(-k // 64), 32, 4)
    assert torch.equal(ref.mma_unpack(words, n, k), q)


def _emulate(words: torch.Tensor, x: torch.Tensor, n: int, pairs: torch.Tensor | None = None,
             shift: int = 30) -> torch.Tensor:
    """y = x @ W.T computed the way mma.cu does it: per lane, its A fragment from its word (the
    PTX m16n8k16 fragment map), its B fragment from the activations, one 16x16x8 product a tile;
    with ``pairs`` (reference.mma_pair_rows of the scales), lane g's two scales of chunk c are
    ``pairs[s, c >> shift, g]`` for rows g and g + 8."""
    m, kp = x.shape[0], words.shape[1] * 64
    xp = torch.nn.functional.pad(x.double(), (0, kp - x.shape[1], 0, 8 - m))
    w = words.to(torch.int64) & 0xFFFFFFFF
    y = torch.zeros(8, words.shape[0] * 16, dtype=torch.float64)
    for s in range(words.shape[0]):
        for c in range(words.shape[1]):
            part = torch.zeros(16, 8, dtype=torch.float64)
            for i in range(4):
                a = torch.zeros(16, 16, dtype=torch.float64)
                b = torch.zeros(16, 8, dtype=torch.float64)
                for lane in range(32):
                    g, t = lane // 4, lane % 4
                    word = int(w[s, c, lane, i])
                    for j in range(4):  # (word >> 4j) & 0x000F000F, minus 8: register a_j
                        pair = (word >> (4 * j)) & 0x000F000F
                        lo, hi = (pair & 0xF) - 8, ((pair >> 16) & 0xF) - 8
                        row = g + (8 if j in (1, 3) else 0)
                        col = 2 * t + (8 if j >= 2 else 0)
                        a[row, col], a[row, col + 1] = lo, hi
                    span = xp[g, c * 64 + 16 * t: c * 64 + 16 * t + 16]  # two 16-byte loads
                    b[2 * t: 2 * t + 2, g] = span[4 * i: 4 * i + 2]  # b0 = 32-bit word 2i
                    b[2 * t + 8: 2 * t + 10, g] = span[4 * i + 2: 4 * i + 4]  # b1 = word 2i + 1
                part += a @ b
            if pairs is not None:
                sc = pairs[s, c >> shift].double()  # [8, 2]: (row g, row g + 8)
                part *= torch.cat([sc[:, 0], sc[:, 1]])[:, None]
            y[:, s * 16: s * 16 + 16] += part.t()
    return y[:m, :n]


@pytest.mark.parametrize("n,k,m", [(16, 64, 1), (40, 200, 3), (17, 128, 8)])
def test_fragment_emulation_matches_dense(n: int, k: int, m: int) -> None:
    gen = torch.Generator().manual_seed(7 * n + k)
    q = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    x = torch.randn(m, k, generator=gen)
    words = ref.mma_repack(ref.pack_int(q, 4), k)
    want = x.double() @ q.double().t()
    assert torch.allclose(_emulate(words, x, n), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n,k,gs,shift", [(40, 256, 128, 1), (17, 320, 64, 0), (24, 192, None, 30)])
def test_scale_pairs_as_the_kernel_reads_them(n: int, k: int, gs: int | None, shift: int) -> None:
    gen = torch.Generator().manual_seed(n * k)
    q = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, 1 if gs is None else -(-k // gs), generator=gen) + 0.5
    x = torch.randn(2, k, generator=gen)
    words = ref.mma_repack(ref.pack_int(q, 4), k)
    want = x.double() @ ref.dequantize(ref.pack_int(q, 4), scale, None, 4, gs, k, dtype=torch.float64).t()
    got = _emulate(words, x, n, ref.mma_pair_rows(scale), shift)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)  # the reference dequantizes in float32


def test_pair_rows_round_trip() -> None:
    t = torch.arange(37 * 3, dtype=torch.float32).view(37, 3)
    p = ref.mma_pair_rows(t, fill=-1.0)
    assert p.shape == (3, 3, 8, 2)
    assert p[1, 2, 5, 0] == t[16 + 5, 2] and p[1, 2, 5, 1] == t[16 + 13, 2]
    assert torch.equal(ref.mma_unpair_rows(p, 37), t) and (ref.mma_unpair_rows(p, 48)[37:] == -1).all()


def test_supports() -> None:
    from presso.kernels.w4a16 import mma

    assert mma.supports(4, 128, 4096) and mma.supports(4, 64, 576) and mma.supports(4, None, 100)
    assert not mma.supports(8, 128, 4096) and not mma.supports(4, 32, 4096)
    assert mma.supports(4, 256, 4096) and not mma.supports(4, 192, 4096)  # groups of 2^j chunks
    assert mma.supports(4, None, 4096, n_groups=1) and not mma.supports(4, None, 4096, n_groups=32)


def test_prepare_layout_on_cpu() -> None:
    from presso.kernels.w4a16 import mma

    n, k, gs = 300, 1000, 64
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, -(-k // gs), generator=gen)
    z = torch.randint(-2, 2, (n, scale.shape[1]), generator=gen, dtype=torch.int8)
    pw = mma.prepare(ref.pack_int(q, 4), scale, z, gs, k)
    assert (pw.npad, pw.kpad, pw.chunks_per_group, pw.n_groups) == (304, 1024, 1, 16)
    assert pw.scale.dtype == torch.float32 and pw.scale.shape == (19, 16, 8, 2)
    full = ref.mma_unpair_rows(pw.scale, pw.npad)
    assert torch.equal(full[:n], scale) and not full[n:].any()
    assert pw.zoff is not None and pw.zoff.dtype == torch.int32
    words = ref.mma_unpair_rows(pw.zoff, n).to(torch.int64) & 0xFFFFFFFF
    lo, hi = (words & 0xFFFF).to(torch.int16), (words >> 16).to(torch.int16)  # both halves: bf16 -(136 + z)
    assert torch.equal(lo, hi)
    assert torch.equal(lo.view(torch.bfloat16).float(), -(z.float() + 136))
    bf = mma.prepare(ref.pack_int(q, 4), scale.to(torch.bfloat16), None, gs, k)
    assert bf.scale.dtype == torch.bfloat16 and bf.zoff is None  # bf16 scales are read as bf16
    assert bf.nbytes == bf.words.numel() * 4 + bf.scale.numel() * 2


def test_launch_mode_and_staging_rules_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules mma.py applies before a launch: programmatic launch from a weight's second call unless
    forced (a copy of a weight starts unlaunched), staging and two stripes a block only for small
    activations, and the shared memory a configuration asks for."""
    from dataclasses import replace

    from presso.kernels.w4a16 import mma

    k = 4096
    q = torch.zeros(64, k, dtype=torch.int8)
    pw = mma.prepare(ref.pack_int(q, 4), torch.ones(64, k // 128, dtype=torch.bfloat16), None, 128, k)
    cpu = torch.device("cpu")
    monkeypatch.delenv("PRESSO_W4A16_PDL", raising=False)
    assert mma._pdl_default(pw, cpu) is False  # first launch: plain (no device query needed)
    monkeypatch.setenv("PRESSO_W4A16_PDL", "1")
    assert mma._pdl_default(pw, cpu) is True
    pw.state.launched = True
    monkeypatch.setenv("PRESSO_W4A16_PDL", "0")
    assert mma._pdl_default(pw, cpu) is False
    assert replace(pw).state.launched is False  # scratch copies never inherit "launched"
    assert mma.staged(pw, 1) and mma.staged(pw, 6) and not mma.staged(pw, 7)  # 48 KiB of activations
    # staged: x + 2 stripes' scale pairs + 8 warps x 4 stages x 2 chunks of 512 B
    assert mma.shared_bytes(pw, 1, 8, 4, 2) == 4096 * 2 + 2 * 32 * 8 * 4 + 8 * 4 * 2 * 512
    # register path: stages of a chunk's words and each lane's scale pair; the warps' sums reuse them
    assert mma.shared_bytes(pw, 16, 8, 4) == 8 * 4 * (512 + 32 * 4)


# --- CUDA: the kernel against the reference -------------------------------------------


def _mma():
    from presso.kernels.w4a16 import mma

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if not mma.available():
        pytest.skip("needs nvcc to build the kernel")
    return mma


def _make(n, k, gs, asym, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    g = 1 if gs is None else -(-k // gs)
    q = torch.randint(-8, 8, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, g, generator=gen, device="cuda") * 0.02 + 0.002).to(torch.bfloat16)
    zp = None
    if asym:
        z = torch.randint(-3, 3, (n, g), generator=gen, device="cuda", dtype=torch.int8)
        zp = ref.pack_int(z.t().contiguous(), 4).t().contiguous()
    return ref.pack_int(q, 4), scale, zp


def _rel_err(y: torch.Tensor, want: torch.Tensor) -> float:
    assert torch.isfinite(y).all()
    return float((y.float() - want.float()).norm() / want.float().norm())


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("k,n", [(4096, 4096), (4096, 14336), (14336, 4096)])
def test_mma_matches_reference_bench_shapes(m: int, k: int, n: int) -> None:
    mma = _mma()
    packed, scale, zp = _make(n, k, 128, False, seed=k + n + m)
    pw = mma.prepare(packed, scale, zp, 128, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    y = mma.matmul(x, pw)
    assert _rel_err(y, ref.w4a16_matmul_ref(x, packed, scale, zp, 4, 128)) <= 1e-2
    assert torch.equal(mma.matmul(x, pw), y)  # fixed-order reduction: bit-equal repeats


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 5, 8, 9, 16])
@pytest.mark.parametrize(
    "n,k,gs,asym,fp32",
    [
        (768, 1000, 128, False, False),  # ragged last group, K padded to 1024
        (300, 1000, 64, True, False),  # zero points, N not a multiple of 16
        (576, 576, 64, False, True),  # SmolLM2's width, float32 scales
        (256, 512, None, False, False),  # channel-wise
        (200, 4096, 256, True, True),
        (64, 8192, 512, False, False),  # groups of 8 chunks (shift 3), 128 chunks a stripe
    ],
)
def test_mma_matches_reference_formats(m, n, k, gs, asym, fp32) -> None:
    mma = _mma()
    packed, scale, zp = _make(n, k, gs, asym, seed=n * 7 + k + m)
    if fp32:
        scale = scale.float() * (1 + 1e-3)  # not representable in bf16: the kernel must read float32
    pw = mma.prepare(packed, scale, zp, gs, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    want = ref.w4a16_matmul_ref(x, packed, scale, zp, 4, gs)
    configs = mma.usable_configs(pw, m)
    assert {(w, d, 1) for w in (4, 8) for d in (4, 8)} <= set(configs)  # small rings always fit
    assert any(c[2] == 2 for c in configs) == mma.staged(pw, m)  # two stripes a block only when staged
    for cfg in configs:  # every launch configuration computes the same product
        assert _rel_err(mma.matmul(x, pw, config=cfg), want) <= 1e-2, cfg


@pytest.mark.gpu
def test_mma_rejects_more_than_16_rows() -> None:
    mma = _mma()
    packed, scale, _ = _make(64, 256, 128, False, seed=5)
    pw = mma.prepare(packed, scale, None, 128, 256)
    with pytest.raises(ValueError, match="1..16 rows"):
        mma.matmul(torch.randn(17, 256, device="cuda", dtype=torch.bfloat16), pw)


@pytest.mark.gpu
def test_mma_programmatic_launch_in_a_cuda_graph() -> None:
    """Back-to-back launches with programmatic dependent launch, captured in a CUDA graph: each call
    reads the previous call's output, so reading x before the previous kernel is done shows as a
    wrong result."""
    mma = _mma()
    packed, scale, _ = _make(1024, 1024, 128, False, seed=9)
    pw = mma.prepare(packed, scale, None, 128, 1024)
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)

    def chain(inp: torch.Tensor) -> list[torch.Tensor]:
        outs = [inp]
        for _ in range(8):
            outs.append(mma.matmul(outs[-1], pw, pdl=True))
        return outs

    chain(x)  # autotune outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = chain(x)
    g.replay()
    torch.cuda.synchronize()
    for prev, got in zip(outs[:-1], outs[1:], strict=True):
        assert _rel_err(got, ref.w4a16_matmul_ref(prev, packed, scale, None, 4, 128)) <= 1e-2


@pytest.mark.gpu
def test_mma_programmatic_launch_from_the_second_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the first launch of a weight is a plain one (it may follow the kernels that wrote
    the weight) and later ones are programmatic; PRESSO_W4A16_PDL=0/1 forces either."""
    mma = _mma()
    packed, scale, _ = _make(256, 512, 128, False, seed=11)
    pw = mma.prepare(packed, scale, None, 128, 512)
    seen: list[bool] = []
    real = mma._launch
    monkeypatch.setattr(mma, "_launch", lambda *a, pdl: (seen.append(pdl), real(*a, pdl=pdl))[1])
    monkeypatch.delenv("PRESSO_W4A16_PDL", raising=False)
    x = torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)
    ys = [mma.matmul(x, pw, config=(4, 4, 1)) for _ in range(3)]
    sm90 = torch.cuda.get_device_capability()[0] >= 9
    assert seen == [False, sm90, sm90]
    assert torch.equal(ys[0], ys[1]) and torch.equal(ys[1], ys[2])
    monkeypatch.setenv("PRESSO_W4A16_PDL", "0")
    mma.matmul(x, pw, config=(4, 4, 1))
    assert seen[-1] is False


@pytest.mark.gpu
def test_public_entry_point_uses_mma_for_bf16() -> None:
    _mma()
    from presso.kernels import w4a16

    packed, scale, zp = _make(512, 1024, 128, False, seed=21)
    x = torch.randn(3, 2, 1024, device="cuda", dtype=torch.bfloat16)
    y = w4a16.w4a16_matmul(x, packed, scale, zp, 4, 128)
    assert any(k[0] == "mma" for k in w4a16._prepared)
    assert y.shape == (3, 2, 512)
    assert _rel_err(y, ref.w4a16_matmul_ref(x, packed, scale, zp, 4, 128)) <= 1e-2
