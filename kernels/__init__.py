"""Presso GPU kernels. Each op has a pure-torch reference beside its Triton version; the
Triton code is imported only on CUDA machines that have Triton, so this package imports
anywhere."""

from kernels.support import triton_available
from kernels.w4a16 import w4a16_matmul, w4a16_matmul_ref

__all__ = ["triton_available", "w4a16_matmul", "w4a16_matmul_ref"]
