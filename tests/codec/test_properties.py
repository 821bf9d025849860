"""Property tests (hypothesis) and the C coder checked against its numpy reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from presso.codec import native, rans
from presso.codec import pzst as codec

from .conftest import build_safetensors

DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "I32": 4, "F64": 8}


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, tuple[str, bytes]]:
    out = {}
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 40), min_size=0, max_size=3))
        n = int(np.prod(shape)) * DTYPES[dtype]
        seed = draw(st.integers(0, 2**32 - 1))
        kind = draw(st.sampled_from(["normal", "uniform", "const", "few"]))
        rng = np.random.default_rng(seed)
        if kind == "normal":
            raw = (rng.standard_normal(n).astype(np.float32) * 0.05).view(np.uint8)[:n].tobytes()
        elif kind == "uniform":
            raw = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        elif kind == "const":
            raw = bytes([int(rng.integers(0, 256))]) * n
        else:
            raw = rng.integers(0, 3, n, dtype=np.uint8).tobytes()
        out[f"t{i}"] = (dtype, raw)
    return out


@settings(max_examples=60, deadline=None)
@given(tensors(), st.sampled_from([16, 64, 1000, 1 << 20]))
def test_roundtrip_random_tensors(ts: dict[str, tuple[str, bytes]], chunk: int) -> None:
    data = build_safetensors(ts)
    assert codec.decode_bytes(codec.encode_bytes(data, chunk_bytes=chunk)) == data


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from([16, 100, 1 << 20]))
def test_roundtrip_any_bytes(data: bytes, chunk: int) -> None:
    assert codec.decode_bytes(codec.encode_bytes(data, chunk_bytes=chunk)) == data


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5000), st.integers(2, 40), st.integers(0, 2**32 - 1))
def test_native_rans_matches_reference(n: int, alphabet: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(alphabet) * 0.5)
    sym = rng.choice(alphabet, n, p=probs).astype(np.uint8) * 3
    counts = np.bincount(sym, minlength=256).astype(np.uint64)
    if np.count_nonzero(counts) < 2:
        return
    payload = rans.encode(sym, counts, cap=4 * n + 4096)
    assert payload is not None
    freq, sb, groups, off = rans.parse_table(np.frombuffer(payload, np.uint8))
    assert payload[off:] == rans.encode_reference(sym, freq, sb, groups)
    stream = np.frombuffer(payload[off:], np.uint8)
    assert np.array_equal(rans.decode_reference(stream, freq, sb, groups, n), sym)
    assert np.array_equal(rans.decode(np.frombuffer(payload, np.uint8), n), sym)


def test_split_merge_match_numpy() -> None:
    rng = np.random.default_rng(0)
    for w in (1, 2, 4, 8):
        block = rng.integers(0, 256, 1000 * w, dtype=np.uint8)
        planes = native.split(block, w)
        assert np.array_equal(planes, block.reshape(-1, w).T)
        out = np.empty_like(block)
        native.merge([planes[k] for k in range(w)], out)
        assert np.array_equal(out, block)
