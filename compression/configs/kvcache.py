"""The recipe's KV-cache option: ``kv_cache: {"format": "fp8"}``. Torch-free.

Calibrated static per-tensor (or per-KV-head: ``"strategy": "attn_head"``) key and value scales per attention
layer (``k_scale`` / ``v_scale``, FP8 E4M3,
``scale = absmax / 448`` over the calibration tokens, keys after the rotary embedding: what the cache stores),
written as compressed-tensors' ``kv_cache_scheme`` and read by vLLM's ``--kv-cache-dtype fp8``. The job's
evaluation runs with keys and values quantized the same way (compression/core/kvquant.py). docs/formats.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class KVCacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["fp8"] = Field(description="The cache's number format: FP8 E4M3 (the one vLLM reads scales for).")
    strategy: Literal["tensor", "attn_head"] = Field(
        default="tensor",
        description="tensor: one key scale and one value scale per attention layer (every vLLM attention backend "
        "reads them). attn_head: one per key/value head (num_key_value_heads, GQA's KV heads), compressed-tensors' "
        "ATTN_HEAD strategy, k_scale / v_scale of shape [heads, 1, 1]; vLLM reads them where the attention "
        "backend supports per-head scales (FlashAttention) and refuses the model elsewhere; docs/formats.md.")
