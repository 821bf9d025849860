"""The codec's hot loops: a small C library built at install, with numpy stand-ins.

``_native.c`` is compiled by setuptools when Presso is installed (``pip install .`` or ``-e .``; the
``Extension`` in setup.py) into ``_native<EXT_SUFFIX>`` beside this module and loaded with ctypes
(which drops the GIL during each call, so chunks decode in parallel). Nothing is compiled at run
time: an installation without the library (a source tree that was never installed) falls back to
numpy, with the same results and much slower rANS, and says so once in the log and in
``presso doctor``. ``PRESSO_CODEC_NATIVE=0`` forces the fallback (tests compare the two).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

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


def library_path() -> Path | None:
    """The compiled coder installed beside this module, if any."""
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_native{suffix}"
        if candidate.is_file():
            return candidate
    return None


STATUS = "numpy fallback"


def _load() -> ctypes.CDLL | None:
    global STATUS
    if os.environ.get("PRESSO_CODEC_NATIVE", "1") == "0":
        STATUS = "numpy fallback (PRESSO_CODEC_NATIVE=0)"
        return None
    path = library_path()
    if path is None:
        STATUS = "numpy fallback (the C coder was not built: reinstall with `pip install .`)"
        log.warning("lossless codec: %s", STATUS)
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        STATUS = f"numpy fallback ({path} does not load: {exc})"
        log.warning("lossless codec: %s", STATUS)
        return None
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    STATUS = f"native ({path})"
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
