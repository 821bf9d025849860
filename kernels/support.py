"""Helpers shared by every op package: whether Triton can run here, bytes a kernel reads."""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when Triton is importable and a CUDA device is present."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the given tensors (None counts 0): what a kernel reads for a prepared weight."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
