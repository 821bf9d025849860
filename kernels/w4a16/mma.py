"""Tensor-core W4A16 matmul (kernels/w4a16/mma.cu) for batch 1..16: build, load, launch.

Built ahead of time where a CUDA toolchain exists: ``presso build-kernels --arch sm_90`` (the GPU
worker image runs it at build time) writes ``mma-<arch>-prebuilt-<source hash>.so`` into the kernel
cache (``PRESSO_KERNEL_CACHE``), which is loaded without ``nvcc``. Failing that, the source is
compiled with ``nvcc`` on first use (a few seconds) into the same cache, keyed by the source, the
compiler and the GPU's architecture. Loaded with ``ctypes``: no PyTorch extension build, no Python
headers. Where neither a build nor ``nvcc`` nor a CUDA device exists, ``available()`` is False and
callers use the Triton kernels or the reference; ``presso doctor`` says which.

Format: 4-bit, symmetric or with zero points, groups of a power-of-two number of 64-wide chunks or
channel-wise, bf16 activations. The pure-torch reference for the layout is ``reference.mma_repack`` /
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
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import torch

from presso.kernels.support import tensor_bytes
from presso.kernels.w4a16 import reference as ref

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("mma.cu")
MAX_BATCH = 16
DISPATCH_MAX_BATCH = 16  # w4a16_matmul routes 1..16 rows here, Triton above (docs/kernels.md)
# (warps a block, ring stages a warp (D - 1 chunks in flight), stripes of 16 rows a block: 2 only with
# staged activations, where the stripes share the activation fragments and the block's set-up)
CONFIGS = [(w, d, s) for w in (4, 8, 16) for d in (4, 8) for s in (1, 2)]
XS_MAX_BYTES = 48 * 1024  # activations up to this size are staged in shared memory once a block (mma.cu)
_BF16_SCALES, _PDL = 1, 2  # launch flags (mma.cu)


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


def build(nvcc: str, arch: str, source: Path = SOURCE) -> Path:
    """Compile ``source`` (mma.cu; benchmarks build their probes the same way) for ``arch`` (e.g.
    ``sm_90``) unless a cached build exists; returns the .so.

    ``PRESSO_W4A16_NVCC_FLAGS`` adds flags (e.g. ``-lineinfo`` for a profiler, or ``-D`` switches
    of a variant under study); they are part of the cache key."""
    extra = os.environ.get("PRESSO_W4A16_NVCC_FLAGS", "").split()
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(source.read_bytes() + version.encode() + arch.encode() + " ".join(extra).encode())
    out = _cache_dir() / f"{source.stem}-{arch}-{key.hexdigest()[:16]}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_so = Path(tmp) / out.name
        cmd = [nvcc, "-O3", "-std=c++17", f"-arch={arch}", "--shared", "-Xcompiler", "-fPIC", *extra,
               "-o", str(tmp_so), str(source)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{res.stderr[-4000:]}")
        os.replace(tmp_so, out)  # atomic: concurrent builders never load a half-written file
    log.info("built %s", out)
    return out


def prebuilt_path(arch: str, source: Path = SOURCE) -> Path:
    """Where ``prebuild`` puts the kernel for ``arch``: keyed by the source alone, loadable without nvcc."""
    tag = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return _cache_dir() / f"{source.stem}-{arch}-prebuilt-{tag}.so"


def prebuild(arch: str, nvcc: str | None = None) -> Path:
    """Compile the kernel for ``arch`` ahead of time (image build, ``presso build-kernels``)."""
    nvcc = nvcc or nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set PRESSO_NVCC or CUDA_HOME)")
    out = prebuilt_path(arch)
    if os.environ.get("PRESSO_W4A16_NVCC_FLAGS"):
        raise RuntimeError("PRESSO_W4A16_NVCC_FLAGS is for experiments; unset it to prebuild the product kernel")
    built = build(nvcc, arch)
    tmp = out.with_suffix(".tmp")
    shutil.copyfile(built, tmp)
    os.replace(tmp, out)
    return out


def status() -> str:
    """One line for ``presso doctor``: which build the tensor-core kernel would use here."""
    if not torch.cuda.is_available():
        return "off (no CUDA device)"
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    if major < 8:
        return f"off ({arch} < sm_80)"
    if prebuilt_path(arch).is_file():
        return f"prebuilt ({prebuilt_path(arch)})"
    nvcc = nvcc_path()
    return f"built on first use with {nvcc}" if nvcc else f"off (no prebuilt {arch} kernel and no nvcc)"


def _locate(arch: str) -> Path | None:
    prebuilt = prebuilt_path(arch)
    if prebuilt.is_file() and not os.environ.get("PRESSO_W4A16_NVCC_FLAGS"):
        return prebuilt
    nvcc = nvcc_path()
    if nvcc is None:
        log.info("no prebuilt %s kernel and no nvcc: the tensor-core W4A16 kernel is off", arch)
        return None
    return build(nvcc, arch)


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return None
    try:
        path = _locate(f"sm_{major}{minor}")
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("tensor-core W4A16 kernel unavailable: %s", exc)
        return None
    lib.presso_w4a16_mma.restype = ctypes.c_int
    lib.presso_w4a16_mma.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 10 + [ctypes.c_void_p]
    lib.presso_cuda_error_string.restype = ctypes.c_char_p
    lib.presso_cuda_error_string.argtypes = [ctypes.c_int]
    return lib


def available() -> bool:
    return _library() is not None


def supports(bits: int, group_size: int | None, k: int, n_groups: int | None = None) -> bool:
    """4-bit, and either one scale per row or groups of a power-of-two number of 64-wide chunks."""
    if bits != 4:
        return False
    if n_groups == 1:
        return True
    if group_size is None or group_size <= 0 or group_size >= k:  # channel-wise
        return n_groups is None
    chunks = group_size // ref.MMA_CHUNK
    return group_size % ref.MMA_CHUNK == 0 and chunks & (chunks - 1) == 0


@dataclass
class _LaunchState:
    launched: bool = False


@dataclass(frozen=True)
class MMAWeight:
    """A 4-bit weight repacked for the tensor-core kernel (make it once, at load time)."""

    words: torch.Tensor  # int32 [S, C, 32, 4] (reference.mma_repack)
    scale: torch.Tensor  # bf16 (when given in bf16) or float32 [S, G, 8, 2] (reference.mma_pair_rows)
    zoff: torch.Tensor | None  # int32 [S, G, 8, 2]: bf16x2 words -(136 + z), twice; None when symmetric
    n: int
    k: int
    chunks_per_group: int
    # after its first launch no kernel writes the weight: programmatic launch is safe (_pdl_default)
    state: _LaunchState = field(default_factory=_LaunchState, init=False, compare=False, repr=False)

    @property
    def kpad(self) -> int:
        return int(self.words.shape[1]) * ref.MMA_CHUNK

    @property
    def npad(self) -> int:
        return int(self.words.shape[0]) * ref.MMA_ROWS

    @property
    def n_groups(self) -> int:
        return int(self.scale.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes the kernel reads for the weight (codes + scales + zero points)."""
        return tensor_bytes(self.words, self.scale, self.zoff)


def _offset_words(zp: torch.Tensor) -> torch.Tensor:
    """Zero points -> int32 words holding bf16 -(136 + z) in both halves."""
    bits = (-(zp + 136.0)).to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    return ref._to_int32(bits | (bits << 16))


def prepare(packed: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
            group_size: int | None, k: int) -> MMAWeight:
    if scale.dim() == 1:
        scale = scale[:, None]
    n, n_groups = scale.shape
    if not supports(4, group_size, k, n_groups):
        raise ValueError(f"unsupported format for the tensor-core path: group_size={group_size}")
    words = ref.mma_repack(packed, k)
    chunks = words.shape[1]
    if n_groups == 1:
        cpg = chunks
    else:
        assert group_size is not None
        ref.group_index(k, group_size, n_groups, packed.device)  # validates the scale's width
        cpg = group_size // ref.MMA_CHUNK
    # bf16 scales stay bf16 (exact, fewer bytes); anything else is read as float32
    scale_k = scale if scale.dtype == torch.bfloat16 else scale.to(torch.float32)
    zp = ref.zero_point_values(zero_point, 4, n)
    zoff = None if zp is None else ref.mma_pair_rows(_offset_words(zp))
    return MMAWeight(words=words, scale=ref.mma_pair_rows(scale_k), zoff=zoff, n=n, k=k, chunks_per_group=cpg)


def _launch(x: torch.Tensor, pw: MMAWeight, y: torch.Tensor, warps: int, depth: int, stripes: int,
            pdl: bool) -> None:
    lib = _library()
    assert lib is not None
    zoff = pw.zoff.data_ptr() if pw.zoff is not None else None
    flags = (_BF16_SCALES if pw.scale.dtype == torch.bfloat16 else 0) | (_PDL if pdl else 0)
    err = lib.presso_w4a16_mma(x.data_ptr(), pw.words.data_ptr(), pw.scale.data_ptr(), zoff, y.data_ptr(),
                               x.shape[0], pw.n, pw.kpad, pw.npad, pw.n_groups, pw.chunks_per_group, warps, depth,
                               stripes, flags, torch.cuda.current_stream(x.device).cuda_stream)
    if err:
        raise RuntimeError(f"w4a16 mma kernel launch failed: {lib.presso_cuda_error_string(err).decode()}")


Config = tuple[int, int, int]  # (warps, depth, stripes)
_DEFAULT_CONFIG: Config = (8, 4, 1)
_tuned: dict[tuple[int, int, int, bool, bool], Config] = {}


def tuned_config(pw: MMAWeight, m: int) -> Config | None:
    """The configuration autotuning chose for this weight's shape and ``m`` rows (None: not tuned yet)."""
    return _tuned.get(_tune_key(pw, m))


def _tune_key(pw: MMAWeight, m: int) -> tuple[int, int, int, bool, bool]:
    return (pw.npad, pw.kpad, (m + 7) // 8, pw.zoff is not None, pw.scale.dtype == torch.bfloat16)


def _pair_bytes(pw: MMAWeight) -> int:
    """Bytes of one lane's scale pair plus, with zero points, its offset pair."""
    return pw.scale.element_size() * 2 + (8 if pw.zoff is not None else 0)


def staged(pw: MMAWeight, m: int) -> bool:
    """Whether ``m`` rows of activations are staged in shared memory once a block (XS in mma.cu)."""
    return m * pw.kpad * 2 <= XS_MAX_BYTES


def shared_bytes(pw: MMAWeight, m: int, warps: int, depth: int, stripes: int = 1) -> int:
    """Dynamic shared memory of a launch (mma.cu): staged (XS), the block holds x and its stripes' scale
    pairs and a stage is ``stripes`` chunks' words; otherwise a stage is a chunk's words and each
    lane's pairs. After the loop the warps' sums reuse it."""
    if staged(pw, m):
        ring = m * pw.kpad * 2 + stripes * pw.n_groups * 8 * _pair_bytes(pw) + warps * depth * stripes * 512
    else:
        ring = warps * depth * (512 + 32 * _pair_bytes(pw))
    return max(ring, warps * 32 * stripes * ((m + 7) // 8) * 4 * 4)


def usable_configs(pw: MMAWeight, m: int, device: torch.device | None = None) -> list[Config]:
    """The configurations that apply to ``m`` rows (two stripes a block only when staged) and whose
    shared memory fits the device (a block may opt in to all of an SM's shared memory but the 1 KiB
    the system reserves, sm_80 and later)."""
    props = torch.cuda.get_device_properties(device or torch.cuda.current_device())
    limit = props.shared_memory_per_multiprocessor - 1024
    return [cfg for cfg in CONFIGS if (cfg[2] == 1 or staged(pw, m)) and shared_bytes(pw, m, *cfg) <= limit]


def _scratch_copies(pw: MMAWeight) -> list[MMAWeight]:
    """Weights of the same shape with random codes, enough of them to overflow L2 twice: tuning on
    the real weight alone would time it from L2, which decode never does."""
    l2 = torch.cuda.get_device_properties(pw.words.device).L2_cache_size
    n = max(2, -(-2 * l2 // pw.nbytes))
    return [replace(
        pw, words=torch.randint(-(2**31), 2**31 - 1, pw.words.shape, device=pw.words.device, dtype=torch.int32),
        scale=torch.rand_like(pw.scale) * 0.01) for _ in range(n)]


_TUNE_LAUNCHES = 32  # launches a timed graph: a steady state, not the ramp of a few launches


def _graph_seconds(x: torch.Tensor, copies: list[MMAWeight], y: torch.Tensor, cfg: Config, pdl: bool) -> float:
    """Seconds a call, one CUDA graph of ``_TUNE_LAUNCHES`` launches cycling over the copies (launch gaps
    amortized; with a handful of launches the chain's start would weigh as much as its steady state)."""
    order = [copies[i % len(copies)] for i in range(max(len(copies), _TUNE_LAUNCHES))]
    stream = torch.cuda.Stream(x.device)
    stream.wait_stream(torch.cuda.current_stream(x.device))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        _launch(x, copies[0], y, *cfg, pdl=False)  # loads the module outside the capture
        with torch.cuda.graph(graph, stream=stream):
            for pw in order:
                _launch(x, pw, y, *cfg, pdl=pdl)
    graph.replay()
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e-3 / len(order))
    return best


def _pdl_mode() -> str:
    return os.environ.get("PRESSO_W4A16_PDL", "auto")


def _autotune(x: torch.Tensor, pw: MMAWeight, y: torch.Tensor) -> Config:
    """The fastest usable configuration for this shape, timed in a CUDA graph on weights not in L2, in
    the launch mode of steady state (programmatic on sm_90+ unless ``PRESSO_W4A16_PDL=0``). Once per
    shape and batch bucket for both launch modes, so that a weight's first call and later ones run the
    same configuration and give bit-identical results; ~2x the L2 size of scratch memory meanwhile."""
    key = _tune_key(pw, x.shape[0])
    hit = _tuned.get(key)
    if hit is None:
        if torch.cuda.is_current_stream_capturing():
            return _DEFAULT_CONFIG  # cannot time inside a capture; not cached
        pdl = _pdl_mode() != "0" and torch.cuda.get_device_capability(x.device)[0] >= 9
        copies = _scratch_copies(pw)
        times = {cfg: _graph_seconds(x, copies, y, cfg, pdl) for cfg in usable_configs(pw, x.shape[0], x.device)}
        del copies
        hit = _tuned[key] = min(times, key=times.__getitem__)
        log.info("w4a16 mma %s -> warps %d, depth %d, stripes %d (%.2f us)", key, *hit, times[hit] * 1e6)
    return hit


def _pdl_default(pw: MMAWeight, device: torch.device) -> bool:
    """``PRESSO_W4A16_PDL``: ``auto`` (default) = from the weight's second launch on, on sm_90+;
    ``1`` = always; ``0`` = never."""
    mode = _pdl_mode()
    if mode in ("0", "1"):
        return mode == "1"
    return pw.state.launched and torch.cuda.get_device_capability(device)[0] >= 9


def matmul(x: torch.Tensor, pw: MMAWeight, config: Config | None = None,
           autotune: bool | None = None, pdl: bool | None = None) -> torch.Tensor:
    """``y = x @ W.T`` for bf16 ``x [..., K]`` with at most 16 rows -> bf16 ``[..., N]``.

    ``pdl``: programmatic dependent launch (sm_90+): the weight's first loads overlap the end of the
    previous kernel in the stream; activations are read and outputs written only after it. Safe for
    a weight no kernel is writing. By default (``PRESSO_W4A16_PDL=auto``) it is on from a weight's
    second launch: the first may directly follow the kernels of ``prepare`` that wrote the weight,
    and nothing writes it afterwards (a changed weight is a new ``prepare``, hence a new object).
    """
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
    if pdl is None:
        pdl = _pdl_default(pw, x.device)
    if config is None:
        if autotune is None:
            autotune = os.environ.get("PRESSO_W4A16_AUTOTUNE", "1") != "0"
        config = _autotune(x2, pw, y) if autotune else _DEFAULT_CONFIG
    elif config not in (usable := usable_configs(pw, m, x.device)):
        raise ValueError(f"config {config} is not one of {usable} on this device")
    _launch(x2, pw, y, *config, pdl=pdl)
    pw.state.launched = True
    return y.reshape(*lead, pw.n)
