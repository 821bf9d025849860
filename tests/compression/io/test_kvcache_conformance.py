"""Conformance of the FP8 KV-cache scales (recipe ``kv_cache: {"format": "fp8"}``) with what vLLM, compressed-tensors
and transformers read (issue 19).

vLLM (vllm-project/vllm, read through the code-search tool):

- compressed_tensors/compressed_tensors.py @ be696453, ``CompressedTensorsKVCacheMethod.validate_kv_cache_scheme``:
  the ``kv_cache_scheme`` must be ``type`` float with ``num_bits`` 8, ``strategy`` "tensor" and ``symmetric``
  (:func:`vllm_accepts`); ``CompressedTensorsConfig.get_quant_method`` gives every ``Attention`` layer that
  method;
- quantization/kv_cache.py @ 0531c222, ``BaseKVCacheMethod.create_weights``: the Attention layer's ``k_scale`` /
  ``v_scale`` parameters are scalars (``torch.tensor(-1.0)``), filled by ``default_weight_loader`` from a
  one-element checkpoint tensor; ``process_weights_after_loading`` uses them as the FP8 cache's per-tensor scales
  (``_k_scale``, ``_v_scale``: x_fp8 = x / scale);
- model_loader/weight_utils.py @ 0a1ee72e, ``maybe_remap_kv_scale_name``: a checkpoint's ``...self_attn.k_scale``
  becomes ``...self_attn.attn.k_scale`` (:func:`vllm_param_name`).

compressed-tensors 0.20.1 (installed): ``QuantizationConfig.kv_cache_scheme`` is a ``QuantizationArgs``;
``apply_quantization_config`` -> ``_apply_kv_cache_scheme`` -> ``initialize_attn_qparams`` registers ``k_scale``
and ``v_scale`` of shape (1,) in the attention parameters' dtype (``initialize_qparams``, strategy tensor), and its
``QuantizedKVCache.forward`` fake-quantizes keys (after RoPE) and values with them, as Presso's simulation does.
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


def vllm_accepts(scheme: dict) -> bool:
    """``CompressedTensorsKVCacheMethod.validate_kv_cache_scheme`` (raises NotImplementedError otherwise)."""
    return (scheme.get("type") == "float" or scheme.get("num_bits") == 8) and scheme.get("strategy") == "tensor" \
        and bool(scheme.get("symmetric"))


def vllm_param_name(name: str) -> str:
    """``maybe_remap_kv_scale_name`` for ``.k_scale`` / ``.v_scale`` (not the modelopt ``k_proj.k_scale`` form)."""
    for suffix in (".k_scale", ".v_scale"):
        if name.endswith(suffix):
            return name.replace(suffix, f".attn{suffix}")
    return name


def _artifact(tmp_path: Path, steps: list[dict], calib: torch.Tensor, dtype: torch.dtype = torch.float32,
              strategy: str = "tensor"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=128, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval().to(dtype)
    compress(model, parse_recipe({"steps": steps, "kv_cache": {"format": "fp8", "strategy": strategy}}),
             StepContext(calibration=calib, batch_size=4))
    forms = write_model(model, None, tmp_path)
    from safetensors.torch import load_file

    qcfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    return model, forms, qcfg, load_file(str(tmp_path / "model.safetensors"))


@pytest.mark.parametrize(("steps", "fmt"), [
    ([{"method": "fp8"}], "float-quantized"),
    ([{"method": "rtn", "bits": 4, "group_size": 32}], "pack-quantized"),  # FP8 KV cache on top of W4A16
    ([{"method": "magnitude", "sparsity": 0.3}], "dense"),  # no weight quantization: a config of its own
])
def test_kv_cache_scheme_and_scales(tmp_path, calib_ids, steps, fmt):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig

    model, forms, qcfg, state = _artifact(tmp_path, steps, calib_ids)
    assert forms[-1] == "kv-cache-fp8"
    assert qcfg["format"] == fmt and qcfg["quant_method"] == "compressed-tensors"
    QuantizationConfig.model_validate(qcfg)
    args = QuantizationArgs.model_validate(qcfg["kv_cache_scheme"])
    assert (args.num_bits, args.type, args.strategy, args.symmetric, args.dynamic) == (8, "float", "tensor", True,
                                                                                         False)
    assert vllm_accepts(qcfg["kv_cache_scheme"])
    scales = {k: v for k, v in state.items() if k.endswith(("k_scale", "v_scale"))}
    assert sorted(scales) == sorted(f"{a}.{s}" for a in ATTNS for s in ("k_scale", "v_scale"))
    for key, t in scales.items():
        assert t.shape == (1,) and t.dtype == torch.float32  # (1,), the attention's dtype; vLLM: one element
        assert vllm_param_name(key).endswith(".self_attn.attn." + key.rsplit(".", 1)[1])
        q = kvquant.quantizer_of(model.get_submodule(key.rsplit(".", 1)[0]))
        assert torch.equal(t, q.k_scale if key.endswith("k_scale") else q.v_scale)


def test_bfloat16_scales_in_the_model_dtype(tmp_path, calib_ids):
    model, _, _, state = _artifact(tmp_path, [{"method": "fp8"}], calib_ids, dtype=torch.bfloat16)
    t = state["model.layers.0.self_attn.k_scale"]
    assert t.dtype == torch.bfloat16
    assert float(t) == float(kvquant.quantizer_of(model.model.layers[0].self_attn).k_scale)  # simulated = stored


@pytest.mark.parametrize("strategy", ["tensor", "attn_head"])
def test_loads_in_presso_and_transformers(tmp_path, calib_ids, strategy):
    """presso.load reinstalls the KV quantizers (per tensor or per KV head: tests/compression/io/
    test_kvcache_heads.py): logits equal the job's model exactly. transformers +
    compressed-tensors: compressed-tensors 0.20.1 hooks an attention layer only when its forward takes
    ``past_key_value(s)`` (``is_cached_attention_module``); transformers 5.25 renamed that argument ``cache``, so
    with these versions it loads the weights, reports ``k_scale`` / ``v_scale`` as unexpected keys and runs the
    cache unquantized: its logits then equal the job's model with the KV simulation off. Where compressed-tensors
    does hook the layer, they must equal the job's model with it on."""
    from compressed_tensors.quantization.lifecycle.initialize import is_cached_attention_module
    from transformers import AutoModelForCausalLM

    from presso.compression.io.formats import artifact_loaders
    from presso.load import load

    model, _, _, _ = _artifact(tmp_path, [{"method": "fp8"}], calib_ids, strategy=strategy)
    assert artifact_loaders(tmp_path) == {"loaders": ["presso.load", "vllm"], "base_loaders": ["transformers"]}
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(ids).logits
        with kvquant.disabled(model):
            no_kv = model(ids).logits
        assert not torch.equal(ours, no_kv)
        loaded = load(tmp_path)
        assert sorted(kvquant.quantizers(loaded)) == ATTNS
        assert {q.strategy for q in kvquant.quantizers(loaded).values()} == {strategy}
        assert torch.equal(loaded(ids).logits, ours)
        theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
        hooked = is_cached_attention_module(theirs.model.layers[0].self_attn)
        torch.testing.assert_close(theirs(ids).logits, ours if hooked else no_kv, rtol=1e-5, atol=1e-5)


def test_dense_output_writes_no_scales(tmp_path, calib_ids):
    model, _, _, _ = _artifact(tmp_path / "a", [{"method": "fp8"}], calib_ids)
    forms = write_model(model, None, tmp_path / "b", "dense")
    assert forms == ["dense"]
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert "quantization_config" not in cfg
