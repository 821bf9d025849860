"""Exact round trips over every dtype and the awkward values; size bounds."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from presso.codec import format as fmt
from presso.codec import native
from presso.codec import pzst as codec

from .conftest import SafetensorsFn, bf16_bytes


def roundtrip(data: bytes, **kw: int) -> bytes:
    enc = codec.encode_bytes(data, **kw)
    out = codec.decode_bytes(enc)
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    return enc


def test_native_library_builds() -> None:
    assert native.available(), "the C codec library should build here (cc is installed)"


def test_every_dtype(safetensors_bytes: SafetensorsFn, weights: dict[str, tuple[str, bytes]]) -> None:
    data = safetensors_bytes(weights)
    enc = roundtrip(data, chunk_bytes=1 << 14)
    assert len(enc) < 0.8 * len(data)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_threads_agree(safetensors_bytes: SafetensorsFn, weights: dict[str, tuple[str, bytes]], threads: int) -> None:
    data = safetensors_bytes(weights)
    enc = codec.encode_bytes(data, chunk_bytes=1 << 13, threads=threads)
    assert enc == codec.encode_bytes(data, chunk_bytes=1 << 13, threads=1)
    assert codec.decode_bytes(enc, threads=threads) == data


def test_special_float_values(safetensors_bytes: SafetensorsFn) -> None:
    specials = np.array(
        [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40, 3.4e38, -3.4e38, 1.0], np.float32
    )
    v = np.tile(specials, 500)
    nan_payload = np.array([0x7FC00001, 0xFFFFFFFF, 0x7F800001], np.uint32).view(np.float32)
    with np.errstate(over="ignore"):
        v16 = v.astype("<f2")
    data = safetensors_bytes(
        {
            "f32": ("F32", np.concatenate([v, nan_payload]).astype("<f4").tobytes()),
            "f16": ("F16", v16.tobytes() + np.array([0x7E01, 0x0001, 0x8000], "<u2").tobytes()),
            "bf16": ("BF16", bf16_bytes(v)),
        }
    )
    roundtrip(data, chunk_bytes=4096)


def test_empty_inputs(safetensors_bytes: SafetensorsFn) -> None:
    roundtrip(b"")
    roundtrip(safetensors_bytes({}))
    roundtrip(safetensors_bytes({"e": ("F32", b""), "f": ("BF16", b"")}))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 13, 65, 1001])
def test_odd_lengths(n: int) -> None:
    rng = np.random.default_rng(n)
    roundtrip(rng.integers(0, 3, n, dtype=np.uint8).tobytes(), chunk_bytes=16)
    # a tensor whose byte length is not a multiple of its dtype width is coded as plain bytes
    from .conftest import build_safetensors

    roundtrip(build_safetensors({"odd": ("F32", rng.integers(0, 255, n, dtype=np.uint8).tobytes())}))


def test_all_equal_is_tiny(safetensors_bytes: SafetensorsFn) -> None:
    data = safetensors_bytes({"z": ("BF16", b"\x80\x3f" * 500_000), "c": ("F32", b"\x00" * 400_000)})
    enc = roundtrip(data)
    assert len(enc) < 2000


@pytest.mark.parametrize("size", [0, 1, 100, 4096, 3 << 20])
def test_random_bytes_do_not_grow(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    enc = roundtrip(data)
    blocks = -(-size // (1 << 20))
    assert len(enc) <= size + fmt.PREAMBLE.size + blocks * (fmt.BLOCK.size + fmt.PLANE.size)


def test_random_weights_in_safetensors_stay_small_overhead(safetensors_bytes: SafetensorsFn) -> None:
    raw = np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    data = safetensors_bytes({"r": ("F32", raw)})
    enc = roundtrip(data)
    assert len(enc) <= len(data) + 512


def test_near_entropy_on_bf16_weights(safetensors_bytes: SafetensorsFn) -> None:
    w = np.random.default_rng(3).standard_normal(1 << 20).astype(np.float32) * 0.02
    data = safetensors_bytes({"w": ("BF16", bf16_bytes(w))})
    enc = roundtrip(data)
    planes = np.frombuffer(bf16_bytes(w), np.uint8).reshape(-1, 2)
    bound = 0.0
    for k in range(2):
        c = np.bincount(planes[:, k], minlength=256)
        p = c[c > 0] / c.sum()
        bound += -(p * np.log2(p)).sum() * c.sum() / 8
    assert len(enc) <= 1.01 * bound + 4096
