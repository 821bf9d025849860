"""llm-compressor's side of bench/quality_formats.py: the deployment-format rows (issue 19).

Runs INSIDE the peer venv (.venv-peer), like bench/peer_llmcompressor.py, whose driver (model loading, the copy of
the perplexity harness, artifact sizes) it reuses: it only adds rows that apply compressed-tensors' preset schemes
with llm-compressor's modifiers. After ``oneshot`` llm-compressor keeps the model in its quantize-dequantize
forward, so the perplexity it measures has the scheme's activations quantized, as Presso's does.

  .venv-peer/bin/python bench/peer_formats.py --list
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_llmcompressor as peer  # noqa: E402

IGNORE = ["lm_head"]


def _preset(scheme: str) -> list[Any]:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(targets="Linear", scheme=scheme, ignore=IGNORE)]


def _gptq_preset(scheme: str) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier

    return [GPTQModifier(targets="Linear", scheme=scheme, ignore=IGNORE, dampening_frac=0.01, block_size=128)]


ROWS: dict[str, tuple[str, Any]] = {
    "fp8_dynamic": ("QuantizationModifier scheme=FP8_DYNAMIC", lambda: _preset("FP8_DYNAMIC")),
    "fp8_static": ("QuantizationModifier scheme=FP8", lambda: _preset("FP8")),
    "fp8_block": ("QuantizationModifier scheme=FP8_BLOCK", lambda: _preset("FP8_BLOCK")),
    "int8_w8a8_rtn": ("QuantizationModifier scheme=W8A8", lambda: _preset("W8A8")),
    "int8_w8a8_gptq": ("GPTQModifier scheme=W8A8", lambda: _gptq_preset("W8A8")),
    "nvfp4_w4a4": ("QuantizationModifier scheme=NVFP4", lambda: _preset("NVFP4")),
    "nvfp4_w4a16": ("QuantizationModifier scheme=NVFP4A16", lambda: _preset("NVFP4A16")),
    "mxfp4_w4a4": ("QuantizationModifier scheme=MXFP4", lambda: _preset("MXFP4")),
    "mxfp4_w4a16": ("QuantizationModifier scheme=MXFP4A16", lambda: _preset("MXFP4A16")),
}

if __name__ == "__main__":
    peer.ROWS.update(ROWS)
    sys.exit(peer.main())
