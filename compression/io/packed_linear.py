"""``PackedLinear``: a pack-quantized layer that stays packed in memory and computes with the kernels.

``presso.load(dir, packed=True)`` puts one in place of every pack-quantized Linear: the int32 codes,
scales and zero points are kept as they are stored (4 bits: ~3.6x less memory than bf16 weights), and
``forward`` calls ``presso.kernels.w4a16_matmul``, which runs the tensor-core or Triton kernel on a GPU and
the pure-torch reference elsewhere. An EoRA residual (``lora_A``/``lora_B``) is added when present.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from presso.kernels import w4a16


class PackedLinear(nn.Module):
    weight_packed: torch.Tensor  # int32 [N, ceil(K * bits / 32)] (compressed-tensors pack-quantized)
    weight_scale: torch.Tensor  # [N, G]
    weight_zero_point: torch.Tensor | None  # as stored (packed along N) or None when symmetric

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None,
                 packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        self.register_buffer("weight_packed", packed)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zero_point)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None

    def add_residual_(self, b: torch.Tensor, a: torch.Tensor) -> None:
        """Add ``b [out, r] @ a [r, in]`` (an EoRA / LoRA residual) to every output."""
        dtype = self.weight_scale.dtype
        self.lora_A = nn.Parameter(a.to(dtype).contiguous(), requires_grad=False)
        self.lora_B = nn.Parameter(b.to(dtype).contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = w4a16.w4a16_matmul(x, self.weight_packed, self.weight_scale, self.weight_zero_point,
                                 self.bits, self.group_size)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        if self.lora_A is not None and self.lora_B is not None:
            y = y + F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return y

    def extra_repr(self) -> str:
        zp = ", asymmetric" if self.weight_zero_point is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}{zp}")
