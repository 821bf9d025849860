"""The codec's hot loops: a small C library built on first use, with numpy stand-ins.

``_native.c`` is compiled with the system C compiler into a per-user cache
(``$PRESSO_CODEC_CACHE`` or ``~/.cache/presso``) keyed by the source's hash and loaded with
ctypes (which drops the GIL during each call, so chunks decode in parallel). Where no compiler
is available every function falls back to numpy: same results, much slower for rANS.
``PRESSO_CODEC_NATIVE=0`` forces the fallback (tests compare the two).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_SRC = Path(__file__).with_name("_native.c")
_u8p = ctypes.c_void_p
_sz = ctypes.c_size_t
_u32 = ctypes.c_uint32
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "pz_split": (None, [_u8p, _sz, _sz, _u8p]),
    "pz_merge": (None, [ctypes.POINTER(ctypes.c_void_p), _sz, _sz, _u8p]),
    "pz_histogram": (None, [_u8p, _sz, _sz, _u8p]),
    "pz_rans_encode": (_sz, [_u8p, _sz, _sz, _u8p, _u32, _u32, _u8p, _sz, _u8p]),
    "pz_rans_decode": (ctypes.c_int, [_u8p, _sz, _u8p, _u32, _u32, _u8p, _sz]),
}


def _cache_dir() -> Path:
    env = os.environ.get("PRESSO_CODEC_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "presso"


def _build() -> Path | None:
    src = _SRC.read_bytes()
    tag = hashlib.sha256(src + sys.platform.encode()).hexdigest()[:16]
    for base in (_cache_dir(), Path(tempfile.gettempdir()) / "presso-codec"):
        lib = base / f"pzcodec-{tag}.so"
        if lib.exists():
            return lib
        try:
            base.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=base, suffix=".so")
            os.close(fd)
            cc = os.environ.get("CC", "cc")
            subprocess.run(
                [cc, "-O3", "-shared", "-fPIC", "-std=c99", "-o", tmp, str(_SRC)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            os.replace(tmp, lib)  # atomic: concurrent builders all end with a whole file
            return lib
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("codec native build in %s failed: %s", base, exc)
    return None


def _load() -> ctypes.CDLL | None:
    if os.environ.get("PRESSO_CODEC_NATIVE", "1") == "0":
        return None
    path = _build()
    if path is None:
        log.warning("no C compiler for the lossless codec: using the (slow) numpy fallback")
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        log.warning("cannot load %s (%s): using the numpy fallback", path, exc)
        return None
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


LIB = _load()


def available() -> bool:
    return LIB is not None


def split(block: np.ndarray, width: int) -> np.ndarray:
    """[width, n] byte planes of ``block`` (n * width bytes): planes[k, i] = block[i * width + k]."""
    n = block.size // width
    if width == 1:
        return block.reshape(1, n)
    if LIB is not None and n:
        out = np.empty((width, n), np.uint8)
        LIB.pz_split(block.ctypes.data, n, width, out.ctypes.data)
        return out
    return np.ascontiguousarray(block.reshape(n, width).T)


def merge(planes: list[np.ndarray], out: np.ndarray) -> None:
    """Interleave contiguous planes (each n bytes) into ``out`` (n * len(planes) bytes)."""
    width, n = len(planes), planes[0].size
    if n == 0:
        return
    if LIB is not None:
        ptrs = (ctypes.c_void_p * width)(*[p.ctypes.data for p in planes])
        LIB.pz_merge(ptrs, n, width, out.ctypes.data)
        return
    view = out.reshape(n, width)
    for k, p in enumerate(planes):
        view[:, k] = p


def histogram(plane: np.ndarray) -> np.ndarray:
    """Counts (uint64[256]) of the bytes of a contiguous plane."""
    counts = np.zeros(256, np.uint64)
    if plane.size and LIB is not None:
        LIB.pz_histogram(plane.ctypes.data, plane.size, 1, counts.ctypes.data)
        return counts
    return np.bincount(plane, minlength=256).astype(np.uint64)
