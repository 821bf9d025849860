"""Per-head FP8 KV-cache scales (recipe ``kv_cache: {"format": "fp8", "strategy": "attn_head"}``, issue 19): the
quantizer's arithmetic, the calibration against the value projection's own outputs (GQA: one scale per KV head),
the artifact as compressed-tensors 0.20.1 and vLLM read it (the loads: test_kvcache_conformance.py, both strategies).

vLLM (vllm-project/vllm, read through the code-search tool; model_executor/layers/quantization/compressed_tensors/
compressed_tensors.py, ``CompressedTensorsKVCacheMethod``):

- ``validate_kv_cache_scheme``: ``type`` float / 8 bits, ``strategy`` in (``tensor``, ``attn_head``), symmetric
  (:func:`vllm_accepts`);
- ``create_weights``: with ``attn_head`` (and a backend whose ``supports_per_head_quant_scales``) ``k_scale`` /
  ``v_scale`` have ``layer.num_kv_heads`` elements, and ``_tp_aware_loader`` flattens the checkpoint's
  ``[num_heads, 1, 1]`` tensor ("LLM-Compressor stores scales as 3D tensors") and keeps this rank's KV heads
  (:func:`vllm_load_scale`); ``process_weights_after_loading`` uses them as the cache's ``_k_scale`` / ``_v_scale``.

compressed-tensors 0.20.1 (installed): ``QuantizationStrategy.ATTN_HEAD``; ``initialize_attn_qparams`` observes
``(num_kv_heads, None, head_dim)`` and ``initialize_qparams`` registers scales of shape ``(observed_shape[-3], 1, 1)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from presso.compression.core import kvquant
from presso.compression.core.context import StepContext
from presso.compression.io.artifact import write_model
from presso.compression.pipeline import compress
from presso.compression.recipe import parse_recipe

pytest.importorskip("compressed_tensors")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
ATTNS = ["model.layers.0.self_attn", "model.layers.1.self_attn"]
KV_HEADS = 2


def vllm_accepts(scheme: dict) -> bool:
    """``CompressedTensorsKVCacheMethod.validate_kv_cache_scheme`` (raises NotImplementedError otherwise)."""
    return (scheme.get("type") == "float" or scheme.get("num_bits") == 8) \
        and scheme.get("strategy") in ("tensor", "attn_head") and bool(scheme.get("symmetric"))


def vllm_load_scale(loaded: torch.Tensor, num_kv_heads: int, tp_rank: int, tp_size: int) -> torch.Tensor:
    """``_tp_aware_loader`` for kind k / v: the flattened checkpoint tensor, this rank's KV heads (or the one head
    a rank replicates when there are fewer KV heads than ranks)."""
    flat = loaded.flatten()
    local = max(num_kv_heads // tp_size, 1)
    if local * tp_size == num_kv_heads:
        return flat[tp_rank * local:(tp_rank + 1) * local].float()
    replicas = tp_size // num_kv_heads
    return flat[tp_rank // replicas:tp_rank // replicas + 1].float()


def _model(dtype: torch.dtype = torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=KV_HEADS, vocab_size=300, max_position_embeddings=128,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval().to(dtype)
    with torch.no_grad():  # KV heads of different ranges: what per-head scales are for
        model.model.layers[0].self_attn.v_proj.weight[32:] *= 8
        model.model.layers[1].self_attn.k_proj.weight[:32] *= 6
    return model


def _compress(model, calib, strategy: str, steps=None):
    return compress(model, parse_recipe({"steps": steps or [{"method": "magnitude", "sparsity": 0.3}],
                                         "kv_cache": {"format": "fp8", "strategy": strategy}}),
                    StepContext(calibration=calib, batch_size=4))


def test_quantizer_arithmetic_per_head():
    q = kvquant.KVQuantizer(observing=True, strategy="attn_head")
    k = torch.zeros(1, 2, 3, 2)
    k[0, 0] = torch.tensor([[0.5, -2.0], [1.0, 0.25], [0.1, 0.0]])
    k[0, 1] = k[0, 0] * 1e-5  # under the per-tensor scale, in FP8's subnormal range
    v = k.flip(1) * 3
    q(k, v)
    q.calibrate(torch.float32)
    assert torch.equal(q.k_scale, torch.tensor([2.0, 2e-5]) / 448)
    assert torch.allclose(q.v_scale, torch.tensor([6e-5, 6.0]) / 448)
    assert q.record["strategy"] == "attn_head" and q.record["k_absmax"] == pytest.approx([2.0, 2e-5])
    kq, _ = q(k, v)
    for h in range(2):  # each head on the FP8 grid of its own scale, its absmax exact
        u = kq[0, h] / q.k_scale[h]
        assert torch.allclose(u, u.to(torch.float8_e4m3fn).float(), rtol=1e-5, atol=1e-6)
        assert kq[0, h].abs().amax() == k[0, h].abs().amax()
    per_tensor = kvquant.KVQuantizer(observing=True)
    per_tensor(k, v)
    per_tensor.calibrate(torch.float32)
    kt, _ = per_tensor(k, v)
    small = (kq[0, 1] - k[0, 1]).abs().max(), (kt[0, 1] - k[0, 1]).abs().max()
    assert small[0] < small[1] / 4  # the small head keeps its precision only with its own scale
    with pytest.raises(ValueError, match="attn_head"):
        kvquant.KVQuantizer(observing=True, strategy="attn_head")(k[0], v[0])


def test_calibration_matches_the_value_projection_per_kv_head(calib_ids):
    """Layer 0's values are ``v_proj(input_layernorm(embed(ids)))``: its scales are their absmax per KV head / 448
    (2 KV heads under 4 query heads); the largest per-head scale is the per-tensor one."""
    model = _model()
    report = _compress(model, calib_ids, "attn_head")
    rec = report["steps"][-1]["layers"][0]
    assert report["steps"][-1]["strategy"] == "attn_head" and len(rec["v_scale"]) == KV_HEADS
    layer = model.model.layers[0]
    with torch.no_grad():
        x = layer.input_layernorm(model.model.embed_tokens(calib_ids))
        vals = layer.self_attn.v_proj(x).reshape(*calib_ids.shape, KV_HEADS, -1)
    expect = vals.abs().amax(dim=(0, 1, 3)) / 448
    q = kvquant.quantizer_of(layer.self_attn)
    torch.testing.assert_close(q.v_scale, expect, rtol=1e-6, atol=0)
    assert float(q.v_scale[1]) > 4 * float(q.v_scale[0])  # the scaled-up head got its own range
    other = _model()
    _compress(other, calib_ids, "tensor")
    a, b = (kvquant.quantizer_of(m.model.layers[0].self_attn) for m in (model, other))  # same inputs in layer 0
    assert float(a.k_scale.max()) == float(b.k_scale) and float(a.v_scale.max()) == float(b.v_scale)
    assert float(a.k_scale.min()) < float(b.k_scale)


def _artifact(tmp_path: Path, calib, dtype=torch.float32, steps=None):
    from safetensors.torch import load_file

    model = _model(dtype)
    _compress(model, calib, "attn_head", steps)
    forms = write_model(model, None, tmp_path)
    qcfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    return model, forms, qcfg, load_file(str(tmp_path / "model.safetensors"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_artifact_scheme_and_scales(tmp_path, calib_ids, dtype):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationStrategy

    model, forms, qcfg, state = _artifact(tmp_path, calib_ids, dtype, [{"method": "fp8"}])
    assert forms[-1] == "kv-cache-fp8" and qcfg["format"] == "float-quantized"
    QuantizationConfig.model_validate(qcfg)
    args = QuantizationArgs.model_validate(qcfg["kv_cache_scheme"])
    assert (args.num_bits, args.type, args.strategy, args.symmetric, args.dynamic) == (
        8, "float", QuantizationStrategy.ATTN_HEAD, True, False)
    assert vllm_accepts(qcfg["kv_cache_scheme"])
    for attn in ATTNS:
        q = kvquant.quantizer_of(model.get_submodule(attn))
        for which, ours in (("k_scale", q.k_scale), ("v_scale", q.v_scale)):
            t = state[f"{attn}.{which}"]
            assert t.shape == (KV_HEADS, 1, 1) and t.dtype == dtype  # compressed-tensors' registered shape
            assert torch.equal(t.float().flatten(), ours)  # simulated = stored
            assert torch.equal(vllm_load_scale(t, KV_HEADS, 0, 1), ours)  # one rank: every head
            assert torch.equal(vllm_load_scale(t, KV_HEADS, 1, 2), ours[1:])  # TP 2: rank 1 keeps head 1
            assert torch.equal(vllm_load_scale(t, KV_HEADS, 3, 4), ours[1:])  # TP 4: head 1 replicated


def test_generation_cache_holds_each_head_on_its_grid(calib_ids):
    from transformers import DynamicCache

    model = _model()
    _compress(model, calib_ids, "attn_head")
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(5)), cache=cache, use_cache=True)
    for i, layer in enumerate(model.model.layers):
        q = kvquant.quantizer_of(layer.self_attn)
        for t, s in ((cache.layers[i].keys, q.k_scale), (cache.layers[i].values, q.v_scale)):
            u = t / s.reshape(1, -1, 1, 1)
            assert torch.allclose(u, u.to(torch.float8_e4m3fn).float(), rtol=1e-5, atol=1e-6)
