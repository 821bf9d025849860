"""Whether the Triton kernels can run here (shared by every op package)."""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when Triton is importable and a CUDA device is present."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()
