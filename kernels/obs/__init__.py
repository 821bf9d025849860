"""The OBS block column loop of GPTQ and SparseGPT (quantize and/or prune one lazy block).

``obs_block`` runs the Triton kernel on CUDA tensors when Triton is installed and the pure-torch
reference otherwise; ``impl`` forces one ("reference" or "triton"). Importing this package never
needs CUDA or Triton.
"""

from __future__ import annotations

import torch

from presso.kernels.obs.reference import obs_block_ref
from presso.kernels.support import triton_available

__all__ = ["obs_block", "obs_block_ref", "triton_available"]


def obs_block(
    w: torch.Tensor,
    u: torch.Tensor,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
    qmin: float = 0.0,
    qmax: float = 0.0,
    prune: torch.Tensor | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize and/or prune the columns of one block; see ``reference.obs_block_ref`` (batched too: ``w``
    [E, N, B] with ``u`` [E, B, B])."""
    if impl not in ("auto", "reference", "triton"):
        raise ValueError(f"impl must be auto, reference or triton, not {impl!r}")
    if impl != "reference" and w.is_cuda and triton_available():
        from presso.kernels.obs import triton as tk

        if tk.supports(w):
            return tk.obs_block(w, u, scale, zero, qmin, qmax, prune)
    if impl == "triton":
        raise RuntimeError("the Triton OBS kernel needs Triton, a CUDA tensor and at most 256 columns")
    return obs_block_ref(w, u, scale, zero, qmin, qmax, prune)
