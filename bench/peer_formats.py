"""llm-compressor's side of bench/quality_formats.py: the deployment-format rows (issue 19).

Runs INSIDE the peer venv (.venv-peer), like bench/peer_llmcompressor.py, whose driver (model loading, the copy of
the perplexity harness, artifact sizes) it reuses: it only adds rows that apply compressed-tensors' preset schemes
with llm-compressor's modifiers. After ``oneshot`` llm-compressor keeps the model in its quantize-dequantize
forward, so the perplexity it measures has the scheme's activations quantized, as Presso's does.

Rows with a transform first: ``SmoothQuantModifier(smoothing_strength=0.5)`` before W8A8, and
``SpinQuantModifier(rotations=["R1"])`` (the offline residual-stream rotation, norms fused: Presso's ``rotate``
step; "random-hadamard": Sylvester's "hadamard" needs a power-of-two hidden size, SmolLM2's is 576) before GPTQ
W4A16. SpinQuantModifier also centers the embeddings, which an RMSNorm model does not ignore: the rotation alone
is close to, not exactly, function-preserving (1-window smoke: 17.02 vs 16.98 dense, 16.98 with the centering
patched out; Presso's rotate is exact).
W4A16 rows quantize int4 symmetric groups of 128 (the W4A16 preset) where 128 divides
a layer's input width, else the largest divisor of it not above 128, as Presso resolves it
(compression/core/quant.py ``resolve_group``): compressed-tensors refuses a group that does not divide the
columns (SmolLM2's 576-column layers get 96, down_proj 128). The FP8 KV-cache row passes ``kv_cache_scheme``
(static per-tensor FP8 k/v scales): compressed-tensors hooks a ``QuantizedKVCache`` in place of the attention's
``past_key_values`` (compressed_tensors/modeling/kvcache.py), which quantizes keys (after RoPE) and values
whenever the attention calls ``update`` — also with ``use_cache=False``, the harness's — so the perplexity has
the cache quantized; the row records how many cache updates were quantized in the evaluation
(``kv_quantized_updates``) and the perplexity with the cache unquantized (``ppl_kv_off``) to show it.

  .venv-peer/bin/python bench/peer_formats.py --list
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_llmcompressor as peer  # noqa: E402

IGNORE = ["lm_head"]
# static per-tensor FP8 E4M3 key / value scales (Presso's kv_cache {"format": "fp8"})
KV_FP8 = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
MIN_GROUP = 16  # compression/core/quant.py


def _preset(scheme: str) -> list[Any]:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(targets="Linear", scheme=scheme, ignore=IGNORE)]


def _gptq_preset(scheme: str) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier

    return [GPTQModifier(targets="Linear", scheme=scheme, ignore=IGNORE, dampening_frac=0.01, block_size=128)]


def _smoothquant() -> Any:
    from llmcompressor.modifiers.transform import SmoothQuantModifier

    return SmoothQuantModifier(smoothing_strength=0.5)


def _resolve_group(k: int, group_size: int) -> int:
    """compression/core/quant.py ``resolve_group`` (this venv cannot import Presso): the largest divisor of
    ``k`` not above ``group_size``; -1 (per channel) below MIN_GROUP."""
    if group_size <= 0 or group_size > k:
        return -1
    for d in range(group_size, MIN_GROUP - 1, -1):
        if k % d == 0:
            return d
    return -1


def _model_dir() -> Path:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--model-dir", type=Path, required=True)
    return ap.parse_known_args()[0].model_dir


def _block_linear_widths(model_dir: Path) -> dict[str, int]:
    """Module-name suffix (``self_attn.q_proj``) -> input columns of the block-list linears, from the
    safetensors headers (no weights loaded)."""
    widths: dict[str, int] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with f.open("rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for key, info in header.items():
            parts = key.split(".")
            if key == "__metadata__" or parts[-1] != "weight" or len(info["shape"]) != 2 or "layers" not in parts:
                continue
            suffix = ".".join(parts[parts.index("layers") + 2:-1])
            widths[suffix] = int(info["shape"][1])
    return widths


def _w4a16_groups(group_size: int = 128) -> dict[str, Any]:
    """The W4A16 preset's weights (int4, symmetric, static groups) with one config group per resolved group
    size, targeting the linears by name suffix."""
    import re

    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    by_group: dict[int, list[str]] = {}
    for suffix, k in sorted(_block_linear_widths(_model_dir()).items()):
        by_group.setdefault(_resolve_group(k, group_size), []).append(suffix)
    groups = {}
    for i, (g, suffixes) in enumerate(sorted(by_group.items())):
        weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, dynamic=False,
                                   strategy="group" if g > 0 else "channel", group_size=g if g > 0 else None)
        targets = ["re:.*\\.(" + "|".join(re.escape(s) for s in suffixes) + ")$"]
        groups[f"group_{i}"] = QuantizationScheme(targets=targets, weights=weights)
    return groups


def _gptq_w4a16(kv_cache: bool = False) -> Any:
    from llmcompressor.modifiers.quantization import GPTQModifier

    return GPTQModifier(config_groups=_w4a16_groups(), ignore=IGNORE, dampening_frac=0.01, block_size=128,
                        kv_cache_scheme=KV_FP8 if kv_cache else None)


def _spinquant_r1() -> Any:
    from llmcompressor.modifiers.transform import SpinQuantModifier

    # "hadamard" (Sylvester) needs a power-of-two hidden size; "random-hadamard" builds 2^k x a known Hadamard
    # matrix (576 = 16 x 36) with random signs, as Presso's rotate builds 2^k x a random orthogonal m x m
    return SpinQuantModifier(rotations=["R1"], transform_type="random-hadamard")


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
    "int8_w8a8_smoothquant": ("SmoothQuantModifier(smoothing_strength=0.5) + QuantizationModifier scheme=W8A8",
                              lambda: [_smoothquant(), *_preset("W8A8")]),
    "int8_w8a8_smoothquant_gptq": ("SmoothQuantModifier(smoothing_strength=0.5) + GPTQModifier scheme=W8A8",
                                   lambda: [_smoothquant(), *_gptq_preset("W8A8")]),
    "gptq_w4a16_g128": ("GPTQModifier W4A16 (int4 sym g128; g96 where 128 does not divide the columns)",
                        lambda: [_gptq_w4a16()]),
    "rotate_gptq_w4a16_g128": ("SpinQuantModifier(rotations=[R1], random-hadamard) + GPTQModifier W4A16 "
                               "(g128; g96 where 128 does not divide)", lambda: [_spinquant_r1(), _gptq_w4a16()]),
    "gptq_w4a16_g128_kv_fp8": ("GPTQModifier W4A16 (g128; g96 where 128 does not divide) + kv_cache_scheme FP8 "
                               "per tensor (static)", lambda: [_gptq_w4a16(kv_cache=True)]),
}


def _kv_modules(model: Any) -> list[Any]:
    """The attention modules whose QuantizedKVCache quantizes (compressed-tensors' kv_cache_scheme)."""
    from compressed_tensors.modeling import KV_CACHE_ATTR

    return [m for m in model.modules() if hasattr(m, KV_CACHE_ATTR)
            and getattr(getattr(m, "quantization_scheme", None), "input_activations", None) is not None]


def _perplexity_kv(model: Any, windows: Any, batch_size: int = 4) -> float:
    """peer.perplexity, counting the KV-cache updates quantized during it (rows with kv_cache_scheme)."""
    from compressed_tensors.modeling import KV_CACHE_ATTR

    attns = _kv_modules(model)
    if not attns:
        return _perplexity(model, windows, batch_size)
    counted = {"n": 0}

    def hook(*_: Any) -> None:
        counted["n"] += 1

    handles = [getattr(m, KV_CACHE_ATTR).register_forward_hook(hook) for m in attns
               if getattr(m, "quantization_enabled", True)]
    try:
        ppl = _perplexity(model, windows, batch_size)
    finally:
        for h in handles:
            h.remove()
    _KV_STATS.setdefault("kv_quantized_updates", 0)
    _KV_STATS["kv_quantized_updates"] += counted["n"]
    _KV_STATS["kv_layers"] = len(attns)
    if "ppl_kv_off" not in _KV_STATS:  # once, on the first (wikitext-2) windows: the same model, cache unquantized
        for m in attns:
            m.quantization_enabled = False
        try:
            _KV_STATS["ppl_kv_off"] = _perplexity(model, windows, batch_size)
        finally:
            for m in attns:
                m.quantization_enabled = True
        scales = [(float(m.k_scale.flatten()[0]), float(m.v_scale.flatten()[0])) for m in attns
                  if hasattr(m, "k_scale") and hasattr(m, "v_scale")]
        if scales:
            _KV_STATS["kv_scale_range"] = {"k": [min(k for k, _ in scales), max(k for k, _ in scales)],
                                           "v": [min(v for _, v in scales), max(v for _, v in scales)]}
    return ppl


def _run_row(row: str, args: Any) -> dict[str, Any]:
    _KV_STATS.clear()
    result = _base_run_row(row, args)
    result.update(_KV_STATS)
    return result


_KV_STATS: dict[str, Any] = {}
_perplexity = peer.perplexity
_base_run_row = peer.run_row

if __name__ == "__main__":
    peer.ROWS.update(ROWS)
    peer.perplexity = _perplexity_kv  # run_row looks both up in peer's namespace
    peer.run_row = _run_row
    sys.exit(peer.main())
