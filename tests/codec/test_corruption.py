"""A damaged stream fails with CodecError, never with wrong bytes."""

from __future__ import annotations

import numpy as np
import pytest

from presso.codec import pzst as codec
from presso.compression.errors import CodecError

from .conftest import SafetensorsFn


@pytest.fixture
def stream(safetensors_bytes: SafetensorsFn, weights: dict[str, tuple[str, bytes]]) -> tuple[bytes, bytes]:
    data = safetensors_bytes(weights)
    return data, codec.encode_bytes(data, chunk_bytes=1 << 14)


def test_every_flipped_bit_position_class_is_detected(stream: tuple[bytes, bytes]) -> None:
    data, enc = stream
    rng = np.random.default_rng(0)
    positions = list(range(0, 200)) + list(rng.integers(200, len(enc), 300))
    for pos in positions:
        bad = bytearray(enc)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(CodecError) as err:
            codec.decode_bytes(bytes(bad))
        assert err.value.code == "codec_error"
        assert err.value.message


@pytest.mark.parametrize("keep", [0, 3, 10, 63, 64, 100, -1, -1000])
def test_truncation_is_detected(stream: tuple[bytes, bytes], keep: int) -> None:
    _, enc = stream
    with pytest.raises(CodecError, match="truncated|shorter|not a PZST|corrupt"):
        codec.decode_bytes(enc[:keep])


def test_trailing_bytes_are_rejected(stream: tuple[bytes, bytes]) -> None:
    _, enc = stream
    with pytest.raises(CodecError, match="trailing"):
        codec.decode_bytes(enc + b"\0")


def test_unknown_version_is_named(stream: tuple[bytes, bytes]) -> None:
    import struct
    import zlib

    _, enc = stream
    head = bytearray(enc[:64])
    head[4:6] = struct.pack("<H", 9)
    head[60:64] = struct.pack("<I", zlib.crc32(bytes(head[:60])))
    with pytest.raises(CodecError, match="version 9"):
        codec.decode_bytes(bytes(head) + enc[64:])


def test_not_a_stream() -> None:
    with pytest.raises(CodecError, match="magic"):
        codec.decode_bytes(b"\x08" + b"\0" * 100)
