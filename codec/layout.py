"""Cut a file into blocks: the safetensors header, then each tensor's bytes split by dtype width.

Any file is accepted: what is not a well-formed safetensors file (or a byte range no tensor
claims) is cut into width-1 "bytes" blocks, so encoding never fails on content.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from presso.codec.format import DTYPES

MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class Span:
    offset: int
    length: int
    width: int
    dtype: int


def tensor_spans(buf: memoryview) -> list[Span]:
    """Contiguous spans covering ``buf`` exactly: header, tensors (with their plane count), gaps."""
    size = len(buf)
    parsed = _parse_safetensors(buf)
    if parsed is None:
        return [Span(0, size, 1, 0)] if size else []
    data_start, tensors = parsed
    spans = [Span(0, data_start, 1, 0)]
    pos = data_start
    for begin, end, dtype in tensors:
        begin, end = begin + data_start, end + data_start
        if begin > pos:
            spans.append(Span(pos, begin - pos, 1, 0))
        code, width = DTYPES.get(dtype, (0, 1))
        if (end - begin) % width:
            width = 1
        if end > begin:
            spans.append(Span(begin, end - begin, width, code))
        pos = end
    if pos < size:
        spans.append(Span(pos, size - pos, 1, 0))
    return spans


def _parse_safetensors(buf: memoryview) -> tuple[int, list[tuple[int, int, str]]] | None:
    """(data start, sorted [(begin, end, dtype)]) or None when not plain, non-overlapping safetensors."""
    if len(buf) < 8:
        return None
    (n,) = struct.unpack("<Q", bytes(buf[:8]))
    if n > MAX_HEADER or 8 + n > len(buf):
        return None
    try:
        header = json.loads(bytes(buf[8 : 8 + n]))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    data_len = len(buf) - 8 - n
    tensors: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            return None
        if not 0 <= begin <= end <= data_len:
            return None
        tensors.append((begin, end, dtype))
    tensors.sort()
    for (_, e0, _), (b1, _, _) in zip(tensors, tensors[1:], strict=False):
        if b1 < e0:
            return None
    return 8 + n, tensors


def blocks_of(spans: list[Span], chunk_bytes: int) -> list[Span]:
    """Cut spans into blocks of at most ~chunk_bytes (a multiple of the width)."""
    out: list[Span] = []
    for s in spans:
        step = max(s.width, chunk_bytes - chunk_bytes % s.width)
        for off in range(0, s.length, step):
            out.append(Span(s.offset + off, min(step, s.length - off), s.width, s.dtype))
    return out
