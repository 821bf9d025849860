"""The modules low-rank steps put into a model.

``FactorizedLinear`` replaces an ``nn.Linear`` by two ordinary Linear layers ``A`` (in -> r) and
``B`` (r -> out, holding the bias): quantizers and pruners that run afterwards discover them like
any other linear (named ``<name>.A`` / ``<name>.B``).

``LoRAResidualLinear`` *is* an ``nn.Linear`` (same name, same weight Parameter, same
``presso_quant`` codes, so a quantized base is still exported packed) with a residual
``lora_B @ lora_A`` added in ``forward``, the EoRA compensation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from presso.compression.core.layout import quantized_of


class FactorizedLinear(nn.Module):
    """y = B(A(x)): a rank-``rank`` stand-in for an ``in_features -> out_features`` Linear."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.A = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.B = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_factors(cls, b: torch.Tensor, a: torch.Tensor, bias: torch.Tensor | None,
                     dtype: torch.dtype) -> FactorizedLinear:
        """``b`` [out, r], ``a`` [r, in]; the module takes ``a``'s device and ``dtype``."""
        out_f, rank = b.shape
        mod = cls(a.shape[1], out_f, rank, bias=bias is not None, device=a.device, dtype=dtype)
        with torch.no_grad():
            mod.A.weight.copy_(a)
            mod.B.weight.copy_(b)
            if bias is not None:
                mod.B.bias.copy_(bias)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x))

    @property
    def weight(self) -> torch.Tensor:
        """The dense [out, in] product B·A (materialized on each access; for export and inspection)."""
        return (self.B.weight.float() @ self.A.weight.float()).to(self.B.weight.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.B.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LoRAResidualLinear(nn.Linear):
    """An ``nn.Linear`` plus a low-rank residual: y = x Wᵀ + b + (x Aᵀ) Bᵀ (PEFT's LoRA with alpha = r)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))

    @classmethod
    def wrap(cls, base: nn.Linear, b: torch.Tensor, a: torch.Tensor) -> LoRAResidualLinear:
        """Share ``base``'s weight, bias and quantized codes; the residual is ``b`` [out, r] @ ``a`` [r, in]."""
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod.in_features, mod.out_features = base.in_features, base.out_features
        mod.weight = base.weight
        mod.bias = base.bias
        dtype, device = base.weight.dtype, base.weight.device
        mod.lora_A = nn.Parameter(a.to(device=device, dtype=dtype).contiguous())
        mod.lora_B = nn.Parameter(b.to(device=device, dtype=dtype).contiguous())
        qw = quantized_of(base)
        if qw is not None:
            mod.presso_quant = qw  # type: ignore[assignment]
        return mod

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B)

    def merged_weight(self) -> torch.Tensor:
        return (self.weight.float() + self.lora_B.float() @ self.lora_A.float()).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lora_rank={self.rank}"


def replace_module_(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at dotted path ``name`` (relative to ``root``)."""
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)
