"""PZST container v1: preamble, block index, and their validation (see docs/codec.md).

preamble (64 bytes, little endian)
    magic "PZST" | u16 version | u16 flags (0) | u64 original size | 32-byte sha256 of the
    original | u32 block count | u32 index bytes | u32 crc32(index) | u32 crc32(preamble[:60])
index: one record per block, in file order
    u64 offset | u32 length | u32 crc32(original block bytes) | u8 width (planes) |
    u8 dtype code | width x (u8 coder, u32 coded length)
payloads: every block's planes, in index order, back to back; nothing after them.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from presso.compression.errors import CodecError

MAGIC = b"PZST"
VERSION = 1
PREAMBLE = struct.Struct("<4sHHQ32sIIII")
BLOCK = struct.Struct("<QIIBB")
PLANE = struct.Struct("<BI")
assert PREAMBLE.size == 64

RAW, CONST, ZSTD, RANS = 0, 1, 2, 3
CODER_NAMES = {RAW: "raw", CONST: "const", ZSTD: "zstd", RANS: "rans"}
WIDTHS = (1, 2, 4, 8)

# safetensors dtype -> (code, planes). Code 0 is "bytes": the file header, gaps, anything unknown.
DTYPES: dict[str, tuple[int, int]] = {
    "BOOL": (1, 1), "U8": (2, 1), "I8": (3, 1), "F8_E4M3": (4, 1), "F8_E5M2": (5, 1),
    "I16": (6, 2), "U16": (7, 2), "F16": (8, 2), "BF16": (9, 2),
    "I32": (10, 4), "U32": (11, 4), "F32": (12, 4),
    "I64": (13, 8), "U64": (14, 8), "F64": (15, 8),
    "F8_E8M0": (16, 1), "F4": (17, 1), "F6_E2M3": (18, 1), "F6_E3M2": (19, 1),
}  # fmt: skip
DTYPE_NAMES = {code: name for name, (code, _) in DTYPES.items()} | {0: "bytes"}


@dataclass(frozen=True)
class Block:
    offset: int
    length: int
    crc: int
    width: int
    dtype: int
    planes: tuple[tuple[int, int], ...]  # (coder, coded length) per plane

    @property
    def coded(self) -> int:
        return sum(n for _, n in self.planes)


@dataclass(frozen=True)
class Header:
    original_size: int
    sha256: bytes
    blocks: list[Block]
    payload_start: int


def pack(original_size: int, sha256: bytes, blocks: list[Block]) -> bytes:
    parts = []
    for b in blocks:
        parts.append(BLOCK.pack(b.offset, b.length, b.crc, b.width, b.dtype))
        parts.extend(PLANE.pack(c, n) for c, n in b.planes)
    index = b"".join(parts)
    head = PREAMBLE.pack(MAGIC, VERSION, 0, original_size, sha256, len(blocks), len(index), zlib.crc32(index), 0)
    head = head[:60] + struct.pack("<I", zlib.crc32(head[:60]))
    return head + index


def unpack(buf: memoryview, total_size: int) -> Header:
    """Parse and check preamble and index against the stream's ``total_size`` bytes."""
    if total_size < PREAMBLE.size:
        raise CodecError(f"not a PZST stream: {total_size} bytes is shorter than the preamble")
    magic, version, flags, size, sha, n_blocks, index_len, index_crc, head_crc = PREAMBLE.unpack(
        bytes(buf[: PREAMBLE.size])
    )
    if magic != MAGIC:
        raise CodecError("not a PZST stream (bad magic)")
    if version != VERSION:
        raise CodecError(f"PZST version {version} is not supported (this build reads version {VERSION})")
    if zlib.crc32(bytes(buf[:60])) != head_crc:
        raise CodecError("PZST preamble is corrupt (checksum mismatch)")
    if flags != 0:
        raise CodecError(f"PZST flags {flags:#x} are not supported")
    start = PREAMBLE.size + index_len
    if total_size < start:
        raise CodecError("PZST stream truncated inside the index")
    index = bytes(buf[PREAMBLE.size : start])
    if zlib.crc32(index) != index_crc:
        raise CodecError("PZST index is corrupt (checksum mismatch)")
    blocks = _parse_index(index, n_blocks, size)
    coded = sum(b.coded for b in blocks)
    if start + coded != total_size:
        what = "truncated" if start + coded > total_size else "followed by trailing bytes"
        raise CodecError(f"PZST stream {what}: expected {start + coded} bytes, got {total_size}")
    return Header(size, sha, blocks, start)


def _parse_index(index: bytes, n_blocks: int, size: int) -> list[Block]:
    blocks: list[Block] = []
    pos = expected = 0
    for _ in range(n_blocks):
        if pos + BLOCK.size > len(index):
            raise CodecError("PZST index is shorter than its block count")
        offset, length, crc, width, dtype = BLOCK.unpack_from(index, pos)
        pos += BLOCK.size
        if width not in WIDTHS or length % width or offset != expected or length == 0:
            raise CodecError(f"PZST index: bad block at offset {offset} (length {length}, width {width})")
        if pos + PLANE.size * width > len(index):
            raise CodecError("PZST index is shorter than its block count")
        planes = tuple(PLANE.unpack_from(index, pos + PLANE.size * k) for k in range(width))
        pos += PLANE.size * width
        if any(c not in CODER_NAMES for c, _ in planes):
            raise CodecError(f"PZST index: unknown coder in block at offset {offset}")
        blocks.append(Block(offset, length, crc, width, dtype, planes))
        expected += length
    if pos != len(index) or expected != size:
        raise CodecError("PZST index does not cover the original exactly")
    return blocks
