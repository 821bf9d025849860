"""The FP8 KV-cache scales of a recipe's ``kv_cache`` option, as compressed-tensors and vLLM read them.

Writing: ``quantization_config.kv_cache_scheme`` = ``{"num_bits": 8, "type": "float", "symmetric": true,
"strategy": "tensor", "dynamic": false, "group_size": null}`` and, per attention layer ``<attn>`` (e.g.
``model.layers.0.self_attn``), ``<attn>.k_scale`` and ``<attn>.v_scale``: one value, shape [1], in the model's
dtype. compressed-tensors registers exactly these parameters on the attention module
(quantization/lifecycle/initialize.py ``initialize_attn_qparams`` -> ``initialize_qparams(module, "k"/"v")``,
strategy tensor -> shape (1,), dtype of the module's parameters); vLLM's weight loader maps
``.self_attn.k_scale`` to its ``Attention`` layer's ``.self_attn.attn.k_scale`` (model_loader/weight_utils.py
``maybe_remap_kv_scale_name``) and ``BaseKVCacheMethod.process_weights_after_loading`` (quantization/kv_cache.py)
uses it as the FP8 cache's per-tensor scale. A model with no other compressed-tensors form gets a
quantization_config of its own (no config groups, format ``dense``).

Per head (``kv_cache: {"strategy": "attn_head"}``): ``kv_cache_scheme.strategy = "attn_head"`` and the scales of
shape ``[num_key_value_heads, 1, 1]``: compressed-tensors 0.20.1 registers that shape
(``initialize_qparams``, ``QuantizationStrategy.ATTN_HEAD`` -> ``(observed_shape[-3], 1, 1)`` with the observed
shape ``(num_kv_heads, None, head_dim)`` of ``initialize_attn_qparams``); vLLM
(compressed_tensors/compressed_tensors.py, ``CompressedTensorsKVCacheMethod.validate_kv_cache_scheme`` accepts
``tensor`` and ``attn_head``; ``create_weights`` makes ``k_scale`` / ``v_scale`` of ``layer.num_kv_heads``
elements when the backend's ``supports_per_head_quant_scales``, and its ``_tp_aware_loader`` flattens the
``[heads, 1, 1]`` checkpoint tensor and slices this rank's KV heads).

transformers + compressed-tensors: with compressed-tensors 0.20.1 and transformers 5.25 the scales are ignored
(``is_cached_attention_module`` looks for a ``past_key_value(s)`` argument, which transformers renamed ``cache``),
so transformers runs the weights with an unquantized cache: a base loader of this form, not a full one.

Reading (``presso.load``): the scales are taken out of the state and a simulating
:class:`~presso.compression.core.kvquant.KVQuantizer` is installed on each attention layer, so the loaded model
computes what the job evaluated. ``output.format: "dense"`` writes no KV scales.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from presso.compression.core import kvquant
from presso.compression.io.formats.base import Format, LoadContext, WriteOptions

KV_CACHE_SCHEME = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None, "strategy": "tensor",
                   "dynamic": False}
_STASH = "_presso_kv_scales"


class KVCacheScales(Format):
    name = "kv-cache-fp8"
    loaders = ("presso.load", "vllm")
    # transformers 5.25 + compressed-tensors 0.20.1 load the weights and ignore the scales (compressed-tensors hooks
    # only attention layers whose forward takes past_key_value(s); transformers renamed it ``cache``): the model
    # without its FP8 cache, as tests/compression/io/test_kvcache_conformance.py checks
    base_loaders = ("transformers", "peft")
    reads_quantization_config = True

    def export(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any],
               options: WriteOptions) -> bool:
        found = False
        strategies: set[str] = set()
        for name, mod in model.named_modules():
            q = kvquant.quantizer_of(mod)
            if q is None or q.k_scale is None or q.v_scale is None:
                continue
            dtype = next(mod.parameters()).dtype
            shape = (-1, 1, 1) if q.strategy == "attn_head" else (1,)
            state[f"{name}.k_scale"] = q.k_scale.reshape(shape).to(dtype).clone()
            state[f"{name}.v_scale"] = q.v_scale.reshape(shape).to(dtype).clone()
            strategies.add(q.strategy)
            found = True
        if not found:
            return False
        qc = config.get("quantization_config")
        if not qc:
            qc = {"quant_method": "compressed-tensors", "format": "dense", "quantization_status": "compressed",
                  "config_groups": {}, "ignore": []}
            config["quantization_config"] = qc
        if len(strategies) > 1:  # one kv_cache_scheme per checkpoint
            raise ValueError(f"kv_cache: the attention layers mix scale strategies {sorted(strategies)}")
        qc["kv_cache_scheme"] = {**KV_CACHE_SCHEME, "strategy": strategies.pop()}
        return True

    def present(self, ctx: LoadContext) -> bool:
        return (ctx.qcfg.get("kv_cache_scheme") or {}).get("type") == "float"

    def load(self, model: nn.Module, state: dict[str, torch.Tensor], ctx: LoadContext) -> None:
        scales: dict[str, dict[str, torch.Tensor]] = {}
        for key in [k for k in state if k.endswith((".k_scale", ".v_scale"))]:
            name, _, which = key.rpartition(".")
            scales.setdefault(name, {})[which] = state.pop(key).float().reshape(-1)
        setattr(ctx, _STASH, scales)

    def after_load(self, model: nn.Module, ctx: LoadContext) -> None:
        strategy = (ctx.qcfg.get("kv_cache_scheme") or {}).get("strategy") or "tensor"
        if strategy not in kvquant.STRATEGIES:
            raise ValueError(f"kv_cache_scheme strategy {strategy!r}: Presso reads {kvquant.STRATEGIES}")
        for name, s in getattr(ctx, _STASH, {}).items():
            if "k_scale" in s and "v_scale" in s:
                kvquant.install_(model.get_submodule(name), kvquant.KVQuantizer(
                    k_scale=s["k_scale"], v_scale=s["v_scale"], strategy=strategy,
                    record={"name": name, "format": "fp8", "strategy": strategy}))
