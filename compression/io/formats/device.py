"""Where the forms do their export tensor work (bit packing, bitmasks) before the tensors go to disk."""

from __future__ import annotations

import torch


def export_device() -> torch.device:
    """A worker with a GPU packs there: the 8B-shape write fell from ~80 s to ~8 s with the int32 packer
    on the H200 (BENCHMARKS §3a). Tensors move through pinned staging and come back to host memory."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
