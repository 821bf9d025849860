"""Builders of safetensors bytes for the codec tests (no torch: dtypes are just byte widths)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

import numpy as np
import pytest

SafetensorsFn = Callable[[dict[str, tuple[str, bytes]]], bytes]


def build_safetensors(tensors: dict[str, tuple[str, bytes]]) -> bytes:
    """name -> (dtype, raw bytes) as one safetensors file (shape = [nbytes // width])."""
    widths = {"F64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    pos = 0
    for name, (dtype, raw) in tensors.items():
        w = widths.get(dtype, 1)
        header[name] = {"dtype": dtype, "shape": [len(raw) // w], "data_offsets": [pos, pos + len(raw)]}
        pos += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(raw for _, raw in tensors.values())


def bf16_bytes(x: np.ndarray) -> bytes:
    """float32 -> bf16 (truncation) bytes."""
    return (x.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


@pytest.fixture
def safetensors_bytes() -> SafetensorsFn:
    return build_safetensors


@pytest.fixture
def weights() -> dict[str, tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(60_000).astype(np.float32) * 0.02
    return {
        "a.bf16": ("BF16", bf16_bytes(w)),
        "b.f16": ("F16", w.astype("<f2").tobytes()),
        "c.f32": ("F32", w.astype("<f4").tobytes()),
        "d.i8": ("I8", rng.integers(-8, 8, 10_000, dtype=np.int8).tobytes()),
        "e.i32": ("I32", rng.integers(0, 1 << 20, 5_000, dtype=np.int32).astype("<i4").tobytes()),
        "f.e4m3": ("F8_E4M3", rng.integers(0, 120, 7_000, dtype=np.uint8).tobytes()),
        "g.e5m2": ("F8_E5M2", rng.integers(40, 70, 7_000, dtype=np.uint8).tobytes()),
        "h.f64": ("F64", w[:3000].astype("<f8").tobytes()),
        "i.unknown": ("Q9_WEIRD", rng.integers(0, 4, 999, dtype=np.uint8).tobytes()),
        "j.empty": ("BF16", b""),
    }
