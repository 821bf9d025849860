"""Tensor-core W4A16 matmul (kernels/w4a16/mma.cu) for batch 1..64: build, load, launch.

The CUDA source is compiled with ``nvcc`` on first use (a few seconds) into a per-user cache
keyed by the source, the compiler and the GPU's architecture, and loaded with ``ctypes``: no
PyTorch extension build, no Python headers. Where ``nvcc`` or a CUDA device is missing,
``available()`` is False and callers use the Triton kernels or the reference.

Format: 4-bit, symmetric or with zero points, group size a multiple of 64 or channel-wise,
bf16 activations. The pure-torch reference for the layout is ``reference.mma_repack`` /
``reference.mma_unpack``; for the product, ``reference.w4a16_matmul_ref``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from kernels.w4a16 import reference as ref

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("mma.cu")
MAX_BATCH = 64
DISPATCH_MAX_BATCH = 16  # w4a16_matmul routes 1..16 rows here; measured slower than Triton at 64 (docs/kernels.md)
CONFIGS = [(w, u) for w in (4, 8, 16) for u in (2, 4)]  # (warps a block, chunks a warp has in flight per stage)


def nvcc_path() -> str | None:
    for cand in (os.environ.get("PRESSO_NVCC"), shutil.which("nvcc")):
        if cand and Path(cand).is_file():
            return cand
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    default = Path(home) / "bin" / "nvcc"
    return str(default) if default.is_file() else None


def _cache_dir() -> Path:
    root = os.environ.get("PRESSO_KERNEL_CACHE") or Path.home() / ".cache" / "presso" / "kernels"
    return Path(root)


def build(nvcc: str, arch: str) -> Path:
    """Compile mma.cu for ``arch`` (e.g. ``sm_90``) unless a cached build exists; returns the .so."""
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode() + arch.encode()).hexdigest()[:16]
    out = _cache_dir() / f"w4a16_mma-{arch}-{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_so = Path(tmp) / out.name
        cmd = [nvcc, "-O3", "-std=c++17", f"-arch={arch}", "--shared", "-Xcompiler", "-fPIC",
               "-o", str(tmp_so), str(SOURCE)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{res.stderr[-4000:]}")
        os.replace(tmp_so, out)  # atomic: concurrent builders never load a half-written file
    log.info("built %s", out)
    return out


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if not torch.cuda.is_available():
        return None
    nvcc = nvcc_path()
    if nvcc is None:
        log.info("nvcc not found: the tensor-core W4A16 kernel is off (Triton kernels are used)")
        return None
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return None
    try:
        lib = ctypes.CDLL(str(build(nvcc, f"sm_{major}{minor}")))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("tensor-core W4A16 kernel unavailable: %s", exc)
        return None
    lib.presso_w4a16_mma.restype = ctypes.c_int
    lib.presso_w4a16_mma.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 7 + [ctypes.c_void_p]
    lib.presso_cuda_error_string.restype = ctypes.c_char_p
    lib.presso_cuda_error_string.argtypes = [ctypes.c_int]
    return lib


def available() -> bool:
    return _library() is not None


def supports(bits: int, group_size: int | None, k: int, n_groups: int | None = None) -> bool:
    """4-bit, and either one scale per row or groups that are whole 64-wide chunks."""
    if bits != 4:
        return False
    if n_groups == 1:
        return True
    if group_size is None or group_size <= 0 or group_size >= k:  # channel-wise
        return n_groups is None
    return group_size % ref.MMA_CHUNK == 0


@dataclass(frozen=True)
class MMAWeight:
    """A 4-bit weight repacked for the tensor-core kernel (make it once, at load time)."""

    words: torch.Tensor  # int32 [S, C, 32, 4]
    scale: torch.Tensor  # float32 [G, Npad]
    zoff: torch.Tensor | None  # float32 [G, Npad], 136 + z; None when symmetric
    n: int
    k: int
    chunks_per_group: int

    @property
    def kpad(self) -> int:
        return int(self.words.shape[1]) * ref.MMA_CHUNK

    @property
    def npad(self) -> int:
        return int(self.words.shape[0]) * ref.MMA_ROWS

    @property
    def nbytes(self) -> int:
        """Bytes the kernel reads for the weight (codes + scales + zero points)."""
        b = self.words.numel() * 4 + self.scale.numel() * 4
        return b + (self.zoff.numel() * 4 if self.zoff is not None else 0)


def prepare(packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
            group_size: int | None, k: int) -> MMAWeight:
    if scale.dim() == 1:
        scale = scale[:, None]
    n, n_groups = scale.shape
    if not supports(4, group_size, k, n_groups):
        raise ValueError(f"unsupported format for the tensor-core path: group_size={group_size}")
    words = ref.mma_repack(packed, k)
    npad, chunks = words.shape[0] * ref.MMA_ROWS, words.shape[1]
    if n_groups == 1:
        cpg = chunks
    else:
        assert group_size is not None
        ref.group_index(k, group_size, n_groups, packed.device)  # validates the scale's width
        cpg = group_size // ref.MMA_CHUNK
    pad = (0, npad - n)
    scale_t = torch.nn.functional.pad(scale.to(torch.float32).t(), pad).contiguous()
    zp = ref.zero_point_values(zero_point, 4, n)
    zoff = None if zp is None else torch.nn.functional.pad((zp + 136.0).t(), pad, value=136.0).contiguous()
    return MMAWeight(words=words, scale=scale_t, zoff=zoff, n=n, k=k, chunks_per_group=cpg)


def _launch(x: torch.Tensor, pw: MMAWeight, y: torch.Tensor, warps: int, unroll: int) -> None:
    lib = _library()
    assert lib is not None
    zoff = pw.zoff.data_ptr() if pw.zoff is not None else None
    err = lib.presso_w4a16_mma(x.data_ptr(), pw.words.data_ptr(), pw.scale.data_ptr(), zoff, y.data_ptr(),
                               x.shape[0], pw.n, pw.kpad, pw.npad, pw.chunks_per_group, warps, unroll,
                               torch.cuda.current_stream(x.device).cuda_stream)
    if err:
        raise RuntimeError(f"w4a16 mma kernel launch failed: {lib.presso_cuda_error_string(err).decode()}")


def _valid(m: int, warps: int) -> bool:
    return warps <= (8 if m > 16 else 16)


def _default_config(m: int) -> tuple[int, int]:
    return (8, 4) if m <= 16 else (4, 2)


_tuned: dict[tuple[int, int, int, bool], tuple[int, int]] = {}


def _autotune(x: torch.Tensor, pw: MMAWeight, y: torch.Tensor) -> tuple[int, int]:
    bucket = (x.shape[0] + 7) // 8
    key = (pw.npad, pw.kpad, bucket, pw.zoff is not None)
    hit = _tuned.get(key)
    if hit is None:
        times = {}
        for cfg in CONFIGS:
            if not _valid(x.shape[0], cfg[0]):
                continue
            for _ in range(3):
                _launch(x, pw, y, *cfg)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                _launch(x, pw, y, *cfg)
            end.record()
            end.synchronize()
            times[cfg] = start.elapsed_time(end)
        hit = _tuned[key] = min(times, key=times.__getitem__)
        log.debug("w4a16 mma %s -> warps %d, unroll %d", key, *hit)
    return hit


def matmul(x: torch.Tensor, pw: MMAWeight, config: tuple[int, int] | None = None,
           autotune: bool | None = None) -> torch.Tensor:
    """``y = x @ W.T`` for bf16 ``x [..., K]`` with at most 64 rows -> bf16 ``[..., N]``."""
    if x.dtype != torch.bfloat16 or x.shape[-1] != pw.k:
        raise ValueError(f"x must be bf16 [..., {pw.k}], got {x.dtype} {tuple(x.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, pw.k)
    m = x2.shape[0]
    if not 1 <= m <= MAX_BATCH:
        raise ValueError(f"the tensor-core kernel takes 1..{MAX_BATCH} rows, got {m}")
    if pw.kpad != pw.k or not x2.is_contiguous() or x2.data_ptr() % 16:
        x2 = torch.nn.functional.pad(x2, (0, pw.kpad - pw.k)).contiguous()
    y = torch.empty(m, pw.n, dtype=torch.bfloat16, device=x.device)
    if config is None:
        if autotune is None:
            autotune = os.environ.get("PRESSO_W4A16_AUTOTUNE", "1") != "0"
        config = _autotune(x2, pw, y) if autotune else _default_config(m)
    if not _valid(m, config[0]):
        raise ValueError(f"config {config} is not valid for {m} rows")
    _launch(x2, pw, y, *config)
    return y.reshape(*lead, pw.n)
