"""Presso's lossless weight codec (PZST): byte-plane split + per-chunk rANS / zstd / raw coding.

The codec's public API in one module (``from presso.codec import pzst as codec``; the folder is a
namespace package and has no ``__init__``). Torch-free: numpy, zstandard and the C coder built at
install. See docs/codec.md for the format. Packed files end in ``.safetensors.pzst``; packed
directories carry ``pack.json``.
"""

from presso.codec.container import (
    DecodeStats,
    EncodeStats,
    decode_buffer,
    decode_bytes,
    encode_buffer,
    encode_bytes,
)
from presso.codec.files import (
    INDEX,
    SUFFIX,
    decode_file,
    encode_file,
    is_packed,
    pack_dir,
    read_index,
    sha256_file,
    unpack_dir,
)

__all__ = [
    "INDEX",
    "SUFFIX",
    "DecodeStats",
    "EncodeStats",
    "decode_buffer",
    "decode_bytes",
    "decode_file",
    "encode_buffer",
    "encode_bytes",
    "encode_file",
    "is_packed",
    "pack_dir",
    "read_index",
    "sha256_file",
    "unpack_dir",
]
