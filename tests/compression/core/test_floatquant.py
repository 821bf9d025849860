"""Number formats against hand-computed values (FP8 E4M3, the E2M1 table, E8M0 scales, an NVFP4 block), then
against compressed-tensors' own functions where it is installed (the conventions artifacts must follow)."""

from __future__ import annotations

import pytest
import torch

from presso.compression.core import floatquant as fq

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def test_e2m1_code_table():
    codes = torch.arange(16, dtype=torch.uint8)
    assert fq.e2m1_decode(codes).tolist() == E2M1 + [-v for v in E2M1]
    assert torch.equal(fq.e2m1_codes(torch.tensor(E2M1 + [-v for v in E2M1[1:]])),
                       torch.tensor(list(range(8)) + list(range(9, 16)), dtype=torch.uint8))


@pytest.mark.parametrize(("x", "want"), [
    (0.25, 0.0), (0.26, 0.5), (0.75, 1.0), (1.25, 1.0), (1.3, 1.5), (1.75, 2.0), (2.5, 2.0), (2.6, 3.0),
    (3.5, 4.0), (5.0, 4.0), (5.1, 6.0), (100.0, 6.0), (-0.3, -0.5), (-2.5, -2.0), (-7.0, -6.0),
])
def test_e2m1_rounds_to_nearest_even(x, want):
    # ties go to the even mantissa: 0.25 -> 0 (not 0.5), 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4
    assert fq.round_e2m1(torch.tensor([x])).item() == want


def test_two_codes_per_byte_low_nibble_first():
    codes = torch.tensor([[1, 7, 0xF, 0x8]], dtype=torch.uint8)  # 0.5, 6, -6, -0
    packed = fq.pack_e2m1(codes)
    assert packed.tolist() == [[0x71, 0x8F]]
    assert torch.equal(fq.unpack_e2m1(packed), codes)


@pytest.mark.parametrize(("amax", "ct", "ocp"), [
    (6.0, 127, 127),  # 6 = 1.5·2^2: both 2^(2-2) = 1, 6/1 = 6 fits exactly
    (7.0, 128, 127),  # 1.75·2^2 rounds up to 2^3 (ct): scale 2; the spec's floor keeps 1 and clips 7 to 6
    (1.0, 125, 125),  # 2^0 -> 2^-2
    (0.1, 121, 121),  # 1.6·2^-4: scale 2^-6, 0.1 / 2^-6 = 6.4 (clipped to 6 by both rules)
    (448.0, 134, 133),  # 448 = 1.75·2^8: ct rounds to 2^9 -> 127 + 9 - 2; the spec: 127 + 8 - 2
])
def test_e8m0_scale_exponents(amax, ct, ocp):
    assert fq.e8m0_exponent(torch.tensor([amax]), "ct").item() == ct
    assert fq.e8m0_exponent(torch.tensor([amax]), "ocp").item() == ocp
    assert fq.e8m0_to_float(torch.tensor([ct], dtype=torch.uint8)).item() == 2.0 ** (ct - 127)


def test_mxfp4_group_scale_and_codes():
    w = torch.zeros(1, 32)
    w[0, :4] = torch.tensor([6.0, -3.0, 1.1, 0.2])
    f = fq.quantize_mxfp4(w)
    assert f.scale.tolist() == [[127]] and f.global_scale is None
    assert f.dequantize()[0, :4].tolist() == [6.0, -3.0, 1.0, 0.0]


def test_nvfp4_known_block():
    """Three groups of 16 in one row. The tensor's absmax is 6, so the global scale is 448·6/6 = 448.
    Group 0 (absmax 6): scale fp8(448·6/6) = 448, step 448/448 = 1: codes are the values themselves.
    Group 1 (absmax 3): scale fp8(224) = 224, step 0.5: 3 -> 6, 1.5 -> 3, 0.75 -> 1.5, -0.25 -> -0.5.
    Group 2 (absmax 1): 448/6 = 74.67 is not an E4M3 value (72 and 80 are): scale 72, step 72/448 = 0.1607,
    so 1.0 / 0.1607 = 6.22 clips to code 6 and dequantizes to 0.964."""
    w = torch.zeros(1, 48)
    w[0, :4] = torch.tensor([6.0, -4.0, 1.5, 0.5])
    w[0, 16:20] = torch.tensor([3.0, 1.5, 0.75, -0.25])
    w[0, 32] = 1.0
    f = fq.quantize_nvfp4(w)
    assert f.global_scale.tolist() == [448.0]
    assert f.scale.float().tolist() == [[448.0, 224.0, 72.0]] and f.scale.dtype == torch.float8_e4m3fn
    assert fq.e2m1_decode(f.codes)[0, :4].tolist() == [6.0, -4.0, 1.5, 0.5]
    assert fq.e2m1_decode(f.codes)[0, 16:20].tolist() == [6.0, 3.0, 1.5, -0.5]
    assert fq.e2m1_decode(f.codes)[0, 32].item() == 6.0
    deq = f.dequantize()
    assert deq[0, :4].tolist() == [6.0, -4.0, 1.5, 0.5] and deq[0, 16:20].tolist() == [3.0, 1.5, 0.75, -0.25]
    assert deq[0, 32].item() == pytest.approx(6 * 72 / 448)


def test_nvfp4_zero_group_scale_is_eps():
    w = torch.zeros(1, 32)
    w[0, 0] = 1.0
    assert fq.quantize_nvfp4(w).scale.float()[0, 1].item() == 0.125  # compressed-tensors' fp8 eps


def test_fp8_weight_scales_and_rounding():
    w = torch.tensor([[448.0, 17.0, -2.0], [896.0, 0.0, 1.0]])
    q, s = fq.quantize_fp8(w, "channel")
    assert s.tolist() == [[1.0], [2.0]] and q.dtype == torch.float8_e4m3fn
    # 17 lies halfway between the E4M3 values 16 and 18: to the even mantissa, 16
    assert q.float().tolist() == [[448.0, 16.0, -2.0], [448.0, 0.0, 0.5]]
    _, st = fq.quantize_fp8(w, "tensor")
    assert st.tolist() == [2.0]
    wb = torch.randn(130, 260)
    qb, sb = fq.quantize_fp8(wb, "block")
    assert sb.shape == (2, 3)  # ceil(130/128) x ceil(260/128), edge blocks ragged
    assert sb[1, 2].item() == pytest.approx(wb[128:, 256:].abs().max().item() / 448)
    assert (fq.dequantize_fp8(qb, sb, "block") - wb).abs().max() <= wb.abs().max() / 16


def test_activation_fake_quant_hand_values():
    x = torch.tensor([[127.5, -1.0, 0.4], [0.0, 0.0, 0.0]])
    out, clipped = fq.fake_quant(x, fq.ActScheme("int8", "token", True))
    # row 0: scale 127.5/127.5 = 1; 127.5 rounds (to even) to 128, past int8's 127: clipped
    assert out[0].tolist() == [127.0, -1.0, 0.0] and clipped.item() == 1
    assert out[1].tolist() == [0.0, 0.0, 0.0]  # a zero row: the eps scale, zeros stay zeros
    s = fq.static_act_scale("fp8", torch.tensor(4.48))
    out, clipped = fq.fake_quant(torch.tensor([[1.0, 9.0]]), fq.ActScheme("fp8", "tensor", False), s)
    assert s.item() == pytest.approx(0.01) and clipped.item() == 1  # 9 > 448 · 0.01
    assert out[0, 1].item() == pytest.approx(4.48)
    gs = fq.static_act_scale("nvfp4", torch.tensor(6.0))
    assert gs.tolist() == [448.0]


def test_format_weight_storage_bits():
    fw = fq.quantize_weight(torch.randn(32, 64), "nvfp4", "tensor_group")
    assert fw.storage_bits() == 32 * 64 * 4 + 32 * 4 * 8 + 32
    assert fq.ideal_bits_per_weight("mxfp4", 32, 64, "group") == 4.25
    fw = fq.quantize_weight(torch.randn(32, 64), "fp8", "channel")
    assert fw.storage_bits() / (32 * 64) == fq.ideal_bits_per_weight("fp8", 32, 64, "channel") == 8.5


# ----------------------------------------------------------------- the same conventions as compressed-tensors


def test_matches_compressed_tensors_fp4_helpers():
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8, unpack_fp4_from_uint8
    from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4
    from compressed_tensors.quantization.utils.mxfp_utils import generate_mx_scales

    x = torch.linspace(-7, 7, 2801)
    assert torch.equal(fq.round_e2m1(x).abs(), cast_to_fp4(x.clone().clamp(-6, 6)).abs())
    q = fq.round_e2m1(torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) * 3)
    assert torch.equal(fq.pack_e2m1(fq.e2m1_codes(q)), pack_fp4_to_uint8(q))
    assert torch.equal(fq.e2m1_decode(fq.unpack_e2m1(pack_fp4_to_uint8(q))),
                       unpack_fp4_from_uint8(pack_fp4_to_uint8(q), 8, 64, torch.float32))
    amax = torch.rand(1000, generator=torch.Generator().manual_seed(1)) * 10 + 1e-3
    assert torch.equal(fq.e8m0_exponent(amax).float(), generate_mx_scales(amax))


def test_matches_compressed_tensors_nvfp4_weights():
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0)) * 0.05
    args = preset_name_to_scheme("NVFP4", ["Linear"]).weights
    gs = generate_gparam(w.min(), w.max())
    g = w.reshape(32, 4, 16)
    scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), args, global_scale=gs)
    mine = fq.quantize_nvfp4(w)
    assert torch.equal(mine.global_scale, gs) and torch.equal(mine.scale.float(), scale)
    assert torch.equal(fq.e2m1_decode(mine.codes), quantize(w, scale, None, args, global_scale=gs))


@pytest.mark.parametrize(("preset", "scheme"), [
    ("FP8_DYNAMIC", fq.ActScheme("fp8", "token", True)),
    ("W8A8", fq.ActScheme("int8", "token", True)),
    ("FP8_BLOCK", fq.ActScheme("fp8", "group", True, 128)),
    ("MXFP4", fq.ActScheme("mxfp4", "group", True, 32)),
    ("NVFP4", fq.ActScheme("nvfp4", "tensor_group", "local", 16)),
    ("FP8", fq.ActScheme("fp8", "tensor", False)),
])
def test_matches_compressed_tensors_activations(preset, scheme):
    """fake_quant equals compressed-tensors' forward_quantize arithmetic bit for bit, and the
    ``input_activations`` entry is the preset's own serialization."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp, generate_gparam

    ia = preset_name_to_scheme(preset, ["Linear"]).input_activations
    x = torch.randn(2, 5, 256, generator=torch.Generator().manual_seed(3)) * 3
    static = None
    if preset == "NVFP4":
        static = generate_gparam(x.min(), x.max())
        s, z = compute_dynamic_scales_and_zp(x, ia, torch.nn.Module(), global_scale=static)
        ref = fake_quantize(x, s, z, ia, global_scale=static)
    elif preset == "FP8":
        static = fq.static_act_scale("fp8", torch.tensor(5.0))
        ref = fake_quantize(x, static, torch.zeros(1), ia)
    else:
        s, z = compute_dynamic_scales_and_zp(x, ia, torch.nn.Module())
        ref = fake_quantize(x, s, z, ia)
    assert torch.equal(fq.fake_quant(x, scheme, static)[0], ref)
    assert scheme.config() == ia.model_dump(mode="json")
