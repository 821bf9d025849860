"""Number formats beyond integer weights: FP8 E4M3, FP4 E2M1 (NVFP4, MXFP4), INT8 W8A8, and activations.

Pure torch. Every convention here is compressed-tensors 0.20.1's (the library llm-compressor writes with and
vLLM reads), so an artifact needs no conversion and the in-memory model computes what a loader computes:

- **FP8 E4M3** (``torch.float8_e4m3fn``, max 448): symmetric, ``scale = amax / 448`` per tensor
  (``[1]``), per output channel (``[N, 1]``) or per 128x128 block (``[ceil(N/128), ceil(K/128)]``, edge
  blocks ragged); codes ``fp8(clamp(w / scale, -448, 448))`` (the cast rounds to nearest even).
  ``calculate_qparams``: ``max_val_pos / (bit_range / 2)`` with ``bit_range = 448 - (-448)``.
- **INT8**: symmetric, ``scale = amax / 127.5`` (``bit_range = 255``), codes ``round(clamp(x / s, -128, 127))``
  (compression.core.quant does the weights; this module the activations).
- **FP4 E2M1**: the 16 codes ``s·{0, 0.5, 1, 1.5, 2, 3, 4, 6}``; code = magnitude index (0..7) | sign << 3;
  rounding to nearest, ties to the even mantissa (``cast_to_fp4``: 0.25 -> 0, 0.75 -> 1, 1.25 -> 1,
  1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4). Two codes per byte, the even column in the low nibble
  (``pack_fp4_to_uint8``).
- **NVFP4** (``nvfp4-pack-quantized``, strategy ``tensor_group``): groups of 16 along the input, FP8 E4M3 group
  scales and one FP32 global scale per tensor, stored the way compressed-tensors stores it, as the
  multiplier ``global = 448 · 6 / amax`` (``generate_gparam``; vLLM computes ``alpha = 1 / (input_global ·
  weight_global)``). Group scale ``fp8(global · amax_g / 6)`` (0 -> 0.125, ``_get_dtype_eps``); the
  effective scale is ``scale / global``: ``w ≈ e2m1 · scale / global``.
- **MXFP4** (``mxfp4-pack-quantized``, OCP Microscaling): groups of 32, E8M0 scales (uint8 biased exponent
  ``e``, scale ``2^(e - 127)``), no global scale. The exponent follows compressed-tensors'
  ``generate_mx_scales``: the group's absmax rounded to a power of two (up when its mantissa is >= 1.75),
  minus 2 (= floor(log2 6), E2M1's largest exponent). The OCP MX spec's plain rule
  ``floor(log2 amax) - 2`` is ``mode="ocp"``; the two differ only for amax in [1.75, 2)·2^k, where the
  spec clips the group's largest values at 6 and the rounded exponent does not.

Activations (``fake_quant``): dynamic per token (int8, fp8), dynamic per group (fp8 group 128, NVFP4 16
with a static calibrated global scale, MXFP4 32), static per tensor (fp8, int8). ``fake_quant`` also
returns how many values fell outside the format's range (the clipping rate of the report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
FP4_MAX = 6.0
INT8_MIN, INT8_MAX = -128, 127
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
NVFP4_GROUP = 16
MXFP4_GROUP = 32
FP8_BLOCK = (128, 128)
E8M0_BIAS = 127
_FP8_SCALE_EPS = 0.125  # compressed-tensors' _get_dtype_eps(float8_e4m3fn): a zero group scale becomes this


def _eps_like(t: torch.Tensor) -> torch.Tensor:
    return torch.tensor(torch.finfo(t.dtype).eps, dtype=t.dtype, device=t.device)


def _nonzero(scale: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    eps_t = eps if isinstance(eps, torch.Tensor) else torch.tensor(eps, dtype=scale.dtype, device=scale.device)
    return torch.where(scale == 0, eps_t, scale)


def _div(amax: torch.Tensor, q: float) -> torch.Tensor:
    """``amax / q`` as an IEEE quotient by a tensor (see compression.core.quant: CUDA multiplies by the
    reciprocal of a Python number, one ulp off)."""
    return amax / torch.full_like(amax, q)


# ---------------------------------------------------------------------------------------------- FP8 E4M3


def fp8_round(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded onto FP8 E4M3 (saturating at +-448), in ``x``'s dtype."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).to(x.dtype)


def _blocks(n: int, k: int, block: tuple[int, int]) -> tuple[int, int]:
    return -(-n // block[0]), -(-k // block[1])


def expand_block_scale(scale: torch.Tensor, n: int, k: int, block: tuple[int, int]) -> torch.Tensor:
    """[ceil(N/bn), ceil(K/bk)] block values -> [N, K] (edge blocks ragged)."""
    return scale.repeat_interleave(block[0], 0)[:n].repeat_interleave(block[1], 1)[:, :k]


def fp8_weight_scale(w: torch.Tensor, strategy: str, block: tuple[int, int] = FP8_BLOCK) -> torch.Tensor:
    """float32 scale of an [N, K] weight: ``tensor`` [1], ``channel`` [N, 1], ``block`` [ceil(N/bn), ceil(K/bk)]."""
    w = w.float()
    if strategy == "tensor":
        amax = w.abs().amax().reshape(1)
    elif strategy == "channel":
        amax = w.abs().amax(dim=1, keepdim=True)
    elif strategy == "block":
        n, k = w.shape
        nb, kb = _blocks(n, k, block)
        padded = torch.zeros(nb * block[0], kb * block[1], dtype=w.dtype, device=w.device)
        padded[:n, :k] = w.abs()
        amax = padded.reshape(nb, block[0], kb, block[1]).amax(dim=(1, 3))
    else:
        raise ValueError(f"fp8 weight strategy {strategy!r}: tensor, channel or block")
    return _nonzero(_div(amax, FP8_MAX), _eps_like(amax))


def _expand_fp8_scale(scale: torch.Tensor, n: int, k: int, strategy: str, block: tuple[int, int]) -> torch.Tensor:
    if strategy == "block":
        return expand_block_scale(scale, n, k, block)
    return scale.reshape(-1, 1) if strategy == "channel" else scale.reshape(1, 1)


def quantize_fp8(w: torch.Tensor, strategy: str, block: tuple[int, int] = FP8_BLOCK,
                 scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes ``float8_e4m3fn`` [N, K], float32 scale) of an [N, K] weight."""
    w = w.float()
    if scale is None:
        scale = fp8_weight_scale(w, strategy, block)
    n, k = w.shape
    s = _expand_fp8_scale(scale, n, k, strategy, block)
    return (w / s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, strategy: str,
                   block: tuple[int, int] = FP8_BLOCK) -> torch.Tensor:
    n, k = q.shape
    return q.float() * _expand_fp8_scale(scale.float(), n, k, strategy, block)


# ---------------------------------------------------------------------------------------------- FP4 E2M1


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded onto the E2M1 grid, ties to the even mantissa, saturating at +-6 (``cast_to_fp4``)."""
    a = x.abs()
    out = torch.full_like(a, 6.0)
    # upper bounds of each code's interval; '<=' where the tie goes down (to the even mantissa)
    out = torch.where(a <= 5.0, torch.full_like(a, 4.0), out)
    out = torch.where(a < 3.5, torch.full_like(a, 3.0), out)
    out = torch.where(a <= 2.5, torch.full_like(a, 2.0), out)
    out = torch.where(a < 1.75, torch.full_like(a, 1.5), out)
    out = torch.where(a <= 1.25, torch.full_like(a, 1.0), out)
    out = torch.where(a < 0.75, torch.full_like(a, 0.5), out)
    out = torch.where(a <= 0.25, torch.zeros_like(a), out)
    return torch.where(torch.signbit(x), -out, out)


def e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 (magnitude index | sign << 3) of values ``x`` ALREADY on the E2M1 grid."""
    a = (x.abs() * 2).round().to(torch.int64)  # 0, 1, 2, 3, 4, 6, 8, 12
    lut = torch.tensor([0, 1, 2, 3, 4, -1, 5, -1, 6, -1, -1, -1, 7], dtype=torch.int64, device=x.device)
    idx = lut[a.clamp(0, 12)]
    return (idx | (torch.signbit(x).to(torch.int64) << 3)).to(torch.uint8)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """float32 values of uint8 E2M1 codes."""
    lut = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    c = codes.to(torch.int64)
    mag = lut[c & 7]
    return torch.where((c & 8) != 0, -mag, mag)


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes -> [N, K/2] uint8, column 2j in the low nibble (compressed-tensors' pack_fp4_to_uint8)."""
    n, k = codes.shape
    if k % 2:
        raise ValueError(f"FP4 packing needs an even number of columns, got {k}")
    c = codes.to(torch.uint8).reshape(n, k // 2, 2)
    return c[..., 0] | (c[..., 1] << 4)


def unpack_e2m1(packed: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """[N, K/2] uint8 -> [N, K] codes."""
    n, half = packed.shape
    out = torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(n, half * 2)
    return out if k is None else out[:, :k]


def _grouped(x: torch.Tensor, group: int) -> torch.Tensor:
    *lead, k = x.shape
    if k % group:
        raise ValueError(f"width {k} is not a multiple of the group size {group}")
    return x.reshape(*lead, k // group, group)


# ------------------------------------------------------------------------------------------------- NVFP4


def nvfp4_global_scale(amax: torch.Tensor) -> torch.Tensor:
    """The FP32 per-tensor global scale, as stored: ``448 · 6 / amax`` (``generate_gparam``), shape [1]."""
    a = amax.float().reshape(1).clamp_min(torch.finfo(torch.float32).tiny)
    gs = torch.full_like(a, FP8_MAX * FP4_MAX) / a
    return torch.nan_to_num(gs, nan=1.0, posinf=1.0, neginf=1.0)


def nvfp4_group_scale(group_amax: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """FP8 group scales (as float32 values) from each group's absmax: ``fp8(global · amax / 6)``, 0 -> 0.125."""
    s = global_scale * _div(group_amax.float(), FP4_MAX)
    s = s.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).float()
    return _nonzero(s, _FP8_SCALE_EPS)


@dataclass
class FP4Weight:
    codes: torch.Tensor  # uint8 [N, K], one E2M1 code per weight
    scale: torch.Tensor  # NVFP4: float8_e4m3fn [N, K/16]; MXFP4: uint8 E8M0 [N, K/32]
    global_scale: torch.Tensor | None  # NVFP4: float32 [1]; MXFP4: None
    group_size: int

    def effective_scale(self) -> torch.Tensor:
        """float32 [N, G]: what one code unit is worth in each group."""
        if self.global_scale is None:
            return e8m0_to_float(self.scale)
        return self.scale.float() / self.global_scale.float()

    def dequantize(self) -> torch.Tensor:
        s = self.effective_scale().repeat_interleave(self.group_size, dim=1)
        return e2m1_decode(self.codes) * s


def quantize_nvfp4(w: torch.Tensor, global_scale: torch.Tensor | None = None) -> FP4Weight:
    """NVFP4 of an [N, K] weight (K a multiple of 16); the global scale from the tensor's absmax unless given."""
    w = w.float()
    if global_scale is None:
        global_scale = nvfp4_global_scale(w.abs().amax())
    g = _grouped(w, NVFP4_GROUP)
    scale = nvfp4_group_scale(g.abs().amax(dim=-1), global_scale)
    eff = scale / global_scale
    q = round_e2m1((g / eff.unsqueeze(-1)).clamp(-FP4_MAX, FP4_MAX)).reshape(w.shape)
    return FP4Weight(codes=e2m1_codes(q), scale=scale.to(FP8_DTYPE), global_scale=global_scale.float(),
                     group_size=NVFP4_GROUP)


# ------------------------------------------------------------------------------------------------- MXFP4


def _round_to_power_2(x: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' round_to_power_2 for float32 and an E2M1 element: keep sign and exponent after adding
    half of the mantissa's top bit below E2M1's one mantissa bit (a mantissa >= 0.75 carries into the exponent)."""
    bits = x.float().contiguous().view(torch.int32)
    mantissa, exponent = 23, 8
    add = 1 << (mantissa - 1 - 1)
    mask = ((1 << (exponent + 1)) - 1) << mantissa
    return torch.bitwise_and(bits + add, mask).view(torch.float32)


def e8m0_exponent(amax: torch.Tensor, mode: str = "ct") -> torch.Tensor:
    """Biased E8M0 exponents (uint8) of MXFP4 groups with absmax ``amax``.

    ``ct`` (default): compressed-tensors' ``generate_mx_scales``; ``ocp``: the OCP MX spec's
    ``floor(log2 amax) - 2``. Exponents are clamped to [0, 254] (255 is E8M0's NaN)."""
    a = amax.float()
    if mode == "ct":
        a = _round_to_power_2(a)
    elif mode != "ocp":
        raise ValueError(f"E8M0 rounding {mode!r}: ct or ocp")
    e = torch.floor(torch.log2(a)) - 2 + E8M0_BIAS
    return torch.nan_to_num(e, nan=0.0, neginf=0.0, posinf=254.0).clamp(0, 254).to(torch.uint8)


def e8m0_to_float(e: torch.Tensor) -> torch.Tensor:
    return torch.exp2(e.to(torch.float32) - E8M0_BIAS)


def quantize_mxfp4(w: torch.Tensor, mode: str = "ct") -> FP4Weight:
    """MXFP4 of an [N, K] weight (K a multiple of 32)."""
    w = w.float()
    g = _grouped(w, MXFP4_GROUP)
    e = e8m0_exponent(g.abs().amax(dim=-1), mode)
    s = e8m0_to_float(e)
    q = round_e2m1((g / s.unsqueeze(-1)).clamp(-FP4_MAX, FP4_MAX)).reshape(w.shape)
    return FP4Weight(codes=e2m1_codes(q), scale=e, global_scale=None, group_size=MXFP4_GROUP)


# ------------------------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class ActScheme:
    """How a layer's input activations are quantized (compressed-tensors ``input_activations``).

    ``kind``: fp8 | int8 | nvfp4 | mxfp4; ``strategy``: token | tensor | group | tensor_group | attn_head (the KV
    cache's static scale per attention head);
    ``dynamic``: True (scales per call), False (a static calibrated scale) or "local" (NVFP4: group scales
    per call under a static calibrated global scale)."""

    kind: str
    strategy: str
    dynamic: bool | str
    group_size: int | None = None

    def config(self) -> dict[str, object]:
        """The compressed-tensors ``input_activations`` entry, as ``QuantizationArgs.model_dump`` writes it."""
        out: dict[str, object] = {
            "num_bits": bits_of(self.kind), "type": "int" if self.kind == "int8" else "float", "symmetric": True,
            "group_size": self.group_size, "strategy": self.strategy, "dynamic": self.dynamic,
        }
        if self.kind in ("nvfp4", "mxfp4"):
            out["scale_dtype"] = "torch.float8_e4m3fn" if self.kind == "nvfp4" else "torch.uint8"
        if self.dynamic is not True:
            out["observer"] = "static_minmax"
        return out

    @property
    def static(self) -> bool:
        """Needs a calibrated scale (per-tensor scale, or NVFP4's global scale)."""
        return self.dynamic is not True


def _token_amax(x: torch.Tensor) -> torch.Tensor:
    return x.abs().amax(dim=-1, keepdim=True)


def static_act_scale(kind: str, amax: torch.Tensor) -> torch.Tensor:
    """The stored static scale of a calibrated absmax: fp8 ``input_scale = amax/448``, int8 ``amax/127.5``,
    NVFP4 ``input_global_scale = 448·6/amax``; float32 [1]."""
    a = amax.float().reshape(1)
    if kind == "fp8":
        return _nonzero(_div(a, FP8_MAX), _eps_like(a))
    if kind == "int8":
        return _nonzero(_div(a, (INT8_MAX - INT8_MIN) / 2), _eps_like(a))
    if kind == "nvfp4":
        return nvfp4_global_scale(a)
    raise ValueError(f"{kind} activations have no static scale")


def _fp_fake(v: torch.Tensor, fmax: float, round_fn) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    clipped = (v.abs() > fmax * (1 + 1e-6)).sum()
    return round_fn(v.clamp(-fmax, fmax)), clipped


def _int_fake(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.round(v)
    clipped = ((r > INT8_MAX) | (r < INT8_MIN)).sum()
    return torch.round(v.clamp(INT8_MIN, INT8_MAX)), clipped


def _fp8_values(v: torch.Tensor) -> torch.Tensor:
    return v.to(FP8_DTYPE).to(v.dtype)


def fake_quant(x: torch.Tensor, scheme: ActScheme, static_scale: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(quantize-dequantize of ``x`` in its dtype, number of clipped values) as compressed-tensors'
    ``forward_quantize`` computes it. ``static_scale``: fp8/int8 ``input_scale``, or NVFP4's
    ``input_global_scale``."""
    kind = scheme.kind
    if kind in ("fp8", "int8"):
        qmax = FP8_MAX if kind == "fp8" else (INT8_MAX - INT8_MIN) / 2
        if scheme.strategy == "tensor" and not scheme.dynamic:
            assert static_scale is not None, "static activations need their calibrated scale"
            s = static_scale.to(x.dtype).reshape(*([1] * x.dim()))
            xs = x
        elif scheme.strategy == "attn_head" and not scheme.dynamic:  # x [batch, heads, seq, head_dim]
            assert static_scale is not None and x.dim() == 4, "attn_head: a scale per head of [B, H, S, D]"
            s = static_scale.to(x.dtype).reshape(1, -1, 1, 1)  # compressed-tensors' (H, 1, 1) broadcast
            xs = x
        elif scheme.strategy == "token":
            s = _nonzero(_div(_token_amax(x), qmax), _eps_like(x))
            xs = x
        elif scheme.strategy == "group":
            xs = _grouped(x, int(scheme.group_size or 0))
            s = _nonzero(_div(xs.abs().amax(dim=-1, keepdim=True), qmax), _eps_like(x))
        elif scheme.strategy == "tensor":
            s = _nonzero(_div(x.abs().amax().reshape(*([1] * x.dim())), qmax), _eps_like(x))
            xs = x
        else:
            raise ValueError(f"{kind} activations per {scheme.strategy}")
        v = xs / s
        q, clipped = _fp_fake(v, FP8_MAX, _fp8_values) if kind == "fp8" else _int_fake(v)
        return (q * s).reshape(x.shape), clipped
    if kind == "nvfp4":
        assert static_scale is not None, "NVFP4 activations need their calibrated global scale"
        # compressed-tensors mixes the activation dtype with the float32 global scale: float32 throughout
        gs = static_scale.to(torch.float32).reshape(1)
        xs = _grouped(x, NVFP4_GROUP)
        eff = nvfp4_group_scale(xs.abs().amax(dim=-1, keepdim=True).float(), gs) / gs
        q, clipped = _fp_fake(xs.float() / eff, FP4_MAX, round_e2m1)
        return (q * eff).reshape(x.shape).to(x.dtype), clipped
    if kind == "mxfp4":
        xs = _grouped(x, MXFP4_GROUP)
        s = e8m0_to_float(e8m0_exponent(xs.abs().amax(dim=-1, keepdim=True))).to(x.dtype)
        q, clipped = _fp_fake(xs / s, FP4_MAX, round_e2m1)
        return (q * s).reshape(x.shape), clipped
    raise ValueError(f"activation format {kind!r}")


def bits_of(kind: str) -> int:
    return {"fp8": 8, "int8": 8, "nvfp4": 4, "mxfp4": 4}[kind]


def ideal_bits_per_weight(kind: str, n: int, k: int, strategy: str, block: tuple[int, int] = FP8_BLOCK) -> float:
    """Bits per weight of a format's ideal storage: codes plus scales (fp32 fp8/int8 scales, fp8 NVFP4
    group scales + one fp32 global, one byte per MXFP4 group), for an [N, K] weight."""
    if kind in ("fp8", "int8"):
        scales = {"tensor": 1, "channel": n, "block": math.prod(_blocks(n, k, block))}[strategy]
        return 8 + 32 * scales / (n * k)
    if kind == "nvfp4":
        return 4 + (8 * n * (k // NVFP4_GROUP) + 32) / (n * k)
    if kind == "mxfp4":
        return 4 + 8 / MXFP4_GROUP
    raise ValueError(kind)


# ------------------------------------------------------------------------------------ a quantized weight


@dataclass
class FormatWeight:
    """The stored form of one [N, K] weight in a float or W8A8 format (``module.presso_format``).

    ``codes``: fp8 ``float8_e4m3fn`` / int8 ``int8`` [N, K], or uint8 E2M1 codes [N, K] (packed on export).
    ``scale``: fp8 / int8 float32 ``[1]`` (tensor), ``[N, 1]`` (channel), ``[ceil(N/bn), ceil(K/bk)]`` (block);
    NVFP4 ``float8_e4m3fn`` [N, K/16]; MXFP4 uint8 E8M0 [N, K/32]. ``global_scale``: NVFP4's float32 [1]."""

    kind: str  # fp8 | int8 | nvfp4 | mxfp4
    strategy: str  # tensor | channel | block | tensor_group | group
    codes: torch.Tensor
    scale: torch.Tensor
    global_scale: torch.Tensor | None = None
    block: tuple[int, int] | None = None
    group_size: int | None = None

    @property
    def shape(self) -> tuple[int, int]:
        n, k = self.codes.shape
        return int(n), int(k)

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        """float32 weights on ``device`` (default: where the codes are)."""
        dev = device or self.codes.device
        codes, scale = self.codes.to(dev), self.scale.to(dev)
        if self.kind == "fp8":
            return dequantize_fp8(codes, scale, self.strategy, self.block or FP8_BLOCK)
        if self.kind == "int8":
            return codes.float() * scale.float().reshape(-1, 1)
        gs = None if self.global_scale is None else self.global_scale.to(dev)
        return FP4Weight(codes, scale, gs, int(self.group_size or 0)).dequantize()

    def cpu(self) -> FormatWeight:
        return FormatWeight(self.kind, self.strategy, self.codes.cpu(), self.scale.cpu(),
                            None if self.global_scale is None else self.global_scale.cpu(), self.block,
                            self.group_size)

    def storage_bits(self) -> int:
        """Bits the artifact stores for this weight: codes (4 or 8 each) and scales as written."""
        n, k = self.shape
        bits = n * k * bits_of(self.kind)
        bits += self.scale.numel() * (8 if self.kind in ("nvfp4", "mxfp4") else 32)
        return bits + (32 if self.global_scale is not None else 0)


def quantize_weight(w: torch.Tensor, kind: str, strategy: str, block: tuple[int, int] = FP8_BLOCK,
                    mx_mode: str = "ct") -> FormatWeight:
    """Round-to-nearest quantization of an [N, K] weight into ``kind`` (fp8, nvfp4, mxfp4; int8: see
    compression.core.quant, symmetric per channel, wrapped by :func:`int8_weight`)."""
    if kind == "fp8":
        q, s = quantize_fp8(w, strategy, block)
        return FormatWeight("fp8", strategy, q, s, block=(block[0], block[1]) if strategy == "block" else None)
    if kind == "nvfp4":
        f = quantize_nvfp4(w)
        return FormatWeight("nvfp4", "tensor_group", f.codes, f.scale, f.global_scale, group_size=NVFP4_GROUP)
    if kind == "mxfp4":
        f = quantize_mxfp4(w, mx_mode)
        return FormatWeight("mxfp4", "group", f.codes, f.scale, group_size=MXFP4_GROUP)
    raise ValueError(f"weight format {kind!r}")


def int8_weight(q: torch.Tensor, scale: torch.Tensor) -> FormatWeight:
    """INT8 per-channel codes [N, K] and scales [N, 1] (compression.core.quant, bits=8, symmetric, group -1)."""
    return FormatWeight("int8", "channel", q.to(torch.int8), scale.float().reshape(-1, 1))


def weight_config(kind: str, strategy: str, block: tuple[int, int] | None = None) -> dict[str, object]:
    """The compressed-tensors ``weights`` entry of a format, as ``QuantizationArgs.model_dump`` writes it."""
    out: dict[str, object] = {"num_bits": bits_of(kind), "type": "int" if kind == "int8" else "float",
                              "symmetric": True, "group_size": None, "strategy": strategy, "dynamic": False}
    if kind == "fp8" and strategy == "block":
        out["block_structure"] = list(block or FP8_BLOCK)
    elif kind == "nvfp4":
        out.update(group_size=NVFP4_GROUP, scale_dtype="torch.float8_e4m3fn")
    elif kind == "mxfp4":
        out.update(group_size=MXFP4_GROUP, scale_dtype="torch.uint8")
    return out


def kind_of(args: dict[str, object] | None) -> str | None:
    """fp8 | int8 | nvfp4 | mxfp4 of a compressed-tensors QuantizationArgs dict (None: another scheme)."""
    if not args:
        return None
    bits, typ, group = args.get("num_bits"), args.get("type"), args.get("group_size")
    if bits == 8:
        return {"float": "fp8", "int": "int8"}.get(str(typ))
    if bits == 4 and typ == "float":
        return {NVFP4_GROUP: "nvfp4", MXFP4_GROUP: "mxfp4"}.get(group)  # type: ignore[call-overload]
    return None


def act_scheme_from_config(args: dict[str, object] | None) -> ActScheme | None:
    kind = kind_of(args)
    if kind is None or args is None:
        return None
    group = args.get("group_size")
    return ActScheme(kind, str(args.get("strategy")), args.get("dynamic", False),  # type: ignore[arg-type]
                     None if group is None else int(group))  # type: ignore[call-overload]
