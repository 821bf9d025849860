"""Packing of codes into int32 words: bit-exact with compressed-tensors' pack_to_int32, round trip."""

from __future__ import annotations

import pytest
import torch

from presso.compression.core.packing import pack_int, pack_zero_points, packed_words, unpack_int, unpack_zero_points
from presso.compression.core.quant import qrange

helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")


def _codes(n: int, k: int, bits: int, seed: int = 0) -> torch.Tensor:
    lo, hi = qrange(bits)
    return torch.randint(lo, hi + 1, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("k", [32, 96, 100, 576, 7])
def test_pack_matches_compressed_tensors_and_round_trips(bits, k):
    q = _codes(5, k, bits, seed=bits * 1000 + k)
    ours = pack_int(q, bits)
    theirs = helpers.pack_to_int32(q, bits, packed_dim=1)
    assert ours.dtype == torch.int32 and ours.shape == (5, packed_words(k, bits))
    assert torch.equal(ours, theirs)
    assert torch.equal(unpack_int(ours, bits, k), q)
    assert torch.equal(helpers.unpack_from_int32(ours, bits, torch.Size((5, k)), packed_dim=1), q)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_extreme_codes_round_trip(bits):
    lo, hi = qrange(bits)
    q = torch.tensor([[lo, hi] * 20, [hi, lo] * 20], dtype=torch.int8)
    assert torch.equal(unpack_int(pack_int(q, bits), bits, 40), q)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_zero_points_pack_along_rows_like_compressed_tensors(bits):
    z = _codes(40, 3, bits, seed=bits)
    ours = pack_zero_points(z, bits)
    assert torch.equal(ours, helpers.pack_to_int32(z, bits, packed_dim=0))
    assert torch.equal(unpack_zero_points(ours, bits, 40), z)


def test_pack_refuses_non_int8():
    with pytest.raises(TypeError):
        pack_int(torch.zeros(2, 8, dtype=torch.int32), 4)
