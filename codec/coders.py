"""Code one block: split into byte planes, pick the smallest coder per plane, and the reverse.

Coders: raw (the bytes), const (one repeated byte), zstd (zstandard frame), rans (order-0
static rANS, rans.py). A coded plane is kept only when it saves at least ``min_gain`` of the
plane, so near-random planes stay raw and decode at memory speed.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

import numpy as np
import zstandard

from presso.codec import native, rans
from presso.codec.format import CODER_NAMES, CONST, RANS, RAW, ZSTD, Block
from presso.codec.layout import Span
from presso.compression.errors import CodecError

_local = threading.local()
SAMPLE = 64 << 10


@dataclass(frozen=True)
class Options:
    zstd_level: int = 3
    min_gain: float = 0.01
    try_zstd_below: float = 0.98  # skip zstd on planes whose order-0 entropy is above this fraction


def _zstd_c(level: int) -> zstandard.ZstdCompressor:
    key = f"c{level}"
    c = getattr(_local, key, None)
    if c is None:
        c = zstandard.ZstdCompressor(level=level, write_content_size=True)
        setattr(_local, key, c)
    return c


def _zstd_d() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def entropy_bytes(counts: np.ndarray) -> float:
    """Order-0 entropy of a histogram, in bytes."""
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum() / 8) if n else 0.0


def encode_plane(plane: np.ndarray, opts: Options) -> tuple[int, bytes]:
    """(coder, payload) for one contiguous plane."""
    n = plane.size
    counts = native.histogram(plane)
    if int(np.count_nonzero(counts)) == 1:
        return CONST, bytes([int(np.argmax(counts))])
    best: tuple[int, bytes] = (RAW, b"")
    cap = int(n * (1 - opts.min_gain))  # a coded plane must beat this to be used
    h = entropy_bytes(counts)
    if h < cap:
        coded = rans.encode(plane, counts, cap)
        if coded is not None:
            best, cap = (RANS, coded), len(coded) - 1
    if h < n * opts.try_zstd_below and _zstd_may_win(plane, opts):
        z = _zstd_c(opts.zstd_level).compress(plane.data)
        if len(z) <= cap:
            best = (ZSTD, z)
    return best


def _zstd_may_win(plane: np.ndarray, opts: Options) -> bool:
    """zstd beats order-0 coding only on repeats: try it on a sample before the whole plane."""
    if plane.size <= 4 * SAMPLE:
        return True
    sample = plane[:SAMPLE]
    z = len(_zstd_c(opts.zstd_level).compress(sample.data))
    return z < 0.99 * entropy_bytes(native.histogram(sample))


def encode_block(data: np.ndarray, span: Span, opts: Options) -> tuple[Block, list[bytes]]:
    """Code ``data`` (the block's original bytes, uint8)."""
    planes = native.split(data, span.width)
    coded = [encode_plane(planes[k], opts) for k in range(span.width)]
    payloads = [p if c != RAW else planes[k].tobytes() for k, (c, p) in enumerate(coded)]
    meta = tuple((c, len(p)) for (c, _), p in zip(coded, payloads, strict=True))
    block = Block(span.offset, span.length, zlib.crc32(data.data), span.width, span.dtype, meta)
    return block, payloads


def decode_plane(coder: int, payload: np.ndarray, n: int) -> np.ndarray:
    """The n bytes of one plane (may be a view of ``payload`` for raw)."""
    if coder == RAW:
        if payload.size != n:
            raise CodecError(f"raw plane: {payload.size} bytes for {n}")
        return payload
    if coder == CONST:
        if payload.size != 1:
            raise CodecError("const plane: bad payload")
        return np.full(n, payload[0], np.uint8)
    if coder == ZSTD:
        try:
            raw = _zstd_d().decompress(payload.data, max_output_size=n)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd plane: {exc}") from exc
        if len(raw) != n:
            raise CodecError(f"zstd plane: {len(raw)} bytes for {n}")
        return np.frombuffer(raw, np.uint8)
    if coder == RANS:
        return rans.decode(payload, n)
    raise CodecError(f"unknown coder {coder}")


def decode_block(block: Block, payload: np.ndarray, out: np.ndarray) -> None:
    """Decode a block's planes from ``payload`` (its coded bytes) into ``out`` and check its crc32."""
    n = block.length // block.width
    planes, pos = [], 0
    for coder, size in block.planes:
        planes.append(decode_plane(coder, payload[pos : pos + size], n))
        pos += size
    native.merge(planes, out)
    if zlib.crc32(out.data) != block.crc:
        raise CodecError(f"block at offset {block.offset}: checksum mismatch (corrupt stream)")


def coder_name(coder: int) -> str:
    return CODER_NAMES.get(coder, str(coder))
