"""Bit-exactness of a lossless job: the sha256 of the decoded artifact's weights against the original's.

The digest runs over the tensors in name order: name, dtype, shape and raw bytes of each. The decoded side is
what ``presso.load`` / ``presso unpack`` read (compression.io.formats.open_artifact decodes ``*.pzst`` in
memory); the original side is the loaded model's state dict under the same names (tied weights the artifact
does not store are not compared: the artifact does not hold them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_sha256(state: Mapping[str, torch.Tensor], names: Iterable[str]) -> str:
    h = hashlib.sha256()
    for name in sorted(names):
        t = state[name]
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def bit_exactness(original: nn.Module, out_dir: Path) -> dict[str, Any]:
    """``bit_exact`` (the two digests equal, and every decoded tensor has an original of the same name),
    both digests and the tensors compared."""
    from presso.compression.io.formats import open_artifact

    decoded = open_artifact(out_dir).reader.state()
    ref = original.state_dict()
    unknown = sorted(n for n in decoded if n not in ref)
    names = [n for n in decoded if n in ref]
    a, b = weights_sha256(ref, names), weights_sha256(decoded, names)
    return {"bit_exact": not unknown and a == b, "weights_sha256": a, "decoded_weights_sha256": b,
            "exact_tensors": len(names), **({"unknown_tensors": unknown[:8]} if unknown else {})}
