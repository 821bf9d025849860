"""Encode and decode whole PZST streams in memory, block-parallel on a thread pool.

zstd and the C rANS coder release the GIL, so blocks code on all cores; decode_buffer hashes
the restored bytes (sha256) in order while later blocks are still decoding.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from presso.codec import format as fmt
from presso.codec.coders import Options, coder_name, decode_block, encode_block
from presso.codec.layout import Span, blocks_of, tensor_spans
from presso.compression.errors import CodecError

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class EncodeStats:
    original_bytes: int
    encoded_bytes: int
    seconds: float
    blocks: int
    sha256: str
    plane_coders: dict[str, int] = field(default_factory=dict)  # coder -> original plane bytes

    @property
    def ratio(self) -> float:
        """encoded / original (lower is better)."""
        return self.encoded_bytes / self.original_bytes if self.original_bytes else 1.0


@dataclass
class DecodeStats:
    original_bytes: int
    encoded_bytes: int
    seconds: float
    sha256: str
    verified: bool


def default_threads(threads: int | None) -> int:
    if threads:
        return max(1, threads)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _ordered(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """fn over items, results in order; a pool (bounded look-ahead) when threads > 1."""
    if threads == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: list[Future[R]] = []
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 4 * threads:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for f in pending:
                f.cancel()


def encode_buffer(
    data: np.ndarray, *, chunk_bytes: int = 1 << 20, threads: int | None = None, opts: Options | None = None
) -> tuple[list[bytes], EncodeStats]:
    """The PZST stream of ``data`` (uint8) as a list of byte strings to concatenate, and stats."""
    t0 = time.perf_counter()
    opts = opts or Options()
    if chunk_bytes < 16:
        raise ValueError("chunk_bytes must be at least 16")
    n_threads = default_threads(threads)
    spans = blocks_of(tensor_spans(data.data), chunk_bytes)
    sha = hashlib.sha256()

    def work(span: Span) -> tuple[fmt.Block, list[bytes]]:
        block = data[span.offset : span.offset + span.length]
        return encode_block(block, span, opts)

    blocks: list[fmt.Block] = []
    payloads: list[bytes] = []
    coders: dict[str, int] = {}
    for (block, parts), span in zip(_ordered(work, spans, n_threads), spans, strict=True):
        sha.update(data[span.offset : span.offset + span.length].data)  # overlaps the pool's work
        blocks.append(block)
        payloads.extend(parts)
        for coder, _ in block.planes:
            name = coder_name(coder)
            coders[name] = coders.get(name, 0) + block.length // block.width
    digest = sha.digest()
    head = fmt.pack(int(data.size), digest, blocks)
    total = len(head) + sum(len(p) for p in payloads)
    stats = EncodeStats(int(data.size), total, time.perf_counter() - t0, len(blocks), digest.hex(), coders)
    return [head, *payloads], stats


def decode_buffer(
    src: np.ndarray, out: np.ndarray | None = None, *, threads: int | None = None, verify: bool = True
) -> tuple[np.ndarray, DecodeStats]:
    """Decode a PZST stream (uint8 array) into ``out`` (or a new array). CodecError when corrupt."""
    t0 = time.perf_counter()
    header = fmt.unpack(src.data, int(src.size))
    if out is None:
        out = np.empty(header.original_size, np.uint8)
    elif out.size != header.original_size:
        raise ValueError(f"out holds {out.size} bytes, the stream restores {header.original_size}")
    jobs: list[tuple[fmt.Block, int]] = []
    pos = header.payload_start
    for b in header.blocks:
        jobs.append((b, pos))
        pos += b.coded

    def work(job: tuple[fmt.Block, int]) -> fmt.Block:
        b, start = job
        decode_block(b, src[start : start + b.coded], out[b.offset : b.offset + b.length])
        return b

    sha = hashlib.sha256()
    for b in _ordered(work, jobs, default_threads(threads)):
        if verify:
            sha.update(out[b.offset : b.offset + b.length].data)
    if verify and sha.digest() != header.sha256:
        raise CodecError("restored bytes do not match the stream's sha256 (corrupt stream)")
    stats = DecodeStats(header.original_size, int(src.size), time.perf_counter() - t0, header.sha256.hex(), verify)
    return out, stats


def encode_bytes(
    data: bytes | bytearray | memoryview, *, chunk_bytes: int = 1 << 20, threads: int | None = None
) -> bytes:
    """PZST-encode a byte string (a whole safetensors file, or any bytes)."""
    arr = np.frombuffer(data, np.uint8) if len(data) else np.empty(0, np.uint8)
    parts, _ = encode_buffer(arr, chunk_bytes=chunk_bytes, threads=threads)
    return b"".join(parts)


def decode_bytes(data: bytes | bytearray | memoryview, *, threads: int | None = None, verify: bool = True) -> bytes:
    """The original bytes of a PZST stream; CodecError when it is corrupt, truncated or unknown."""
    arr = np.frombuffer(data, np.uint8) if len(data) else np.empty(0, np.uint8)
    out, _ = decode_buffer(arr, threads=threads, verify=verify)
    return out.tobytes()
