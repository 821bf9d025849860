"""Simulated FP8 KV cache (issue 19, recipe ``kv_cache``): the quantizer's arithmetic against hand-computed values,
what lands in a real transformers cache during generation, calibration through the pipeline, and the recipe's
calibration needs."""

from __future__ import annotations

import pytest
import torch

from presso.compression.core import kvquant
from presso.compression.core.context import StepContext
from presso.compression.errors import CalibrationRequired
from presso.compression.pipeline import compress, preflight
from presso.compression.recipe import parse_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _on_fp8_grid(x: torch.Tensor, scale: float) -> bool:
    """Every value is an FP8 E4M3 number times ``scale`` (up to float32 rounding of the division)."""
    v = (x.float() / scale).flatten()
    return bool(torch.allclose(v, v.to(torch.float8_e4m3fn).float(), rtol=1e-5, atol=1e-6))


def test_quantizer_arithmetic():
    q = kvquant.KVQuantizer(observing=True)
    k = torch.tensor([[0.5, -2.0], [1.0, 0.25]])
    v = torch.tensor([[4.48, 0.1], [-1.0, 3.0]])
    assert q(k, v) == (k, v) and (q.k_absmax, q.v_absmax) == (2.0, pytest.approx(4.48))
    q.calibrate(torch.float32)
    assert float(q.k_scale) == pytest.approx(2.0 / 448) and float(q.v_scale) == pytest.approx(4.48 / 448)
    kq, vq = q(k, v)
    assert _on_fp8_grid(kq, float(q.k_scale)) and _on_fp8_grid(vq, float(q.v_scale))
    assert kq[0, 1] == -2.0  # the absmax maps to 448, exactly representable
    # 0.1 / (4.48 / 448) = 10 -> FP8 E4M3 10 exactly; 3.0 / 0.01 = 300 -> 288 (E4M3 spacing 32 above 256)
    assert vq[0, 1] == pytest.approx(0.1) and vq[1, 1] == pytest.approx(288 * 0.01)
    assert q.record["clip_rate"] == 0.0
    q(k * 2, v)  # doubled keys: -4 is past the calibrated range (2 sits on it): 1 of the 16 values seen
    assert q.record["clip_rate"] == pytest.approx(1 / 16)
    q.enabled = False
    assert q(k, v) == (k, v)
    bf = kvquant.KVQuantizer(k_absmax=1.0, v_absmax=1.0)
    bf.calibrate(torch.bfloat16)  # the scale as the model's dtype stores it
    assert float(bf.k_scale) == float(torch.tensor(1 / 448).to(torch.bfloat16))



@pytest.fixture
def model(tiny_llama_factory):
    return tiny_llama_factory(hidden=128, inter=256)


def _kv_recipe(steps=None):
    return parse_recipe({"steps": steps or [{"method": "fp8"}], "kv_cache": {"format": "fp8"}})


def test_recipe_needs_calibration_and_schema():
    assert _kv_recipe([{"method": "fp8"}]).needs_calibration
    assert not parse_recipe({"steps": [{"method": "fp8"}]}).needs_calibration
    with pytest.raises(ValueError, match="format"):
        parse_recipe({"steps": [{"method": "fp8"}], "kv_cache": {"format": "int4"}})
    with pytest.raises(ValueError, match="extra"):
        parse_recipe({"steps": [{"method": "fp8"}], "kv_cache": {"format": "fp8", "scales": 3}})


def test_without_calibration_is_refused(model):
    with pytest.raises(CalibrationRequired, match="kv_cache"):
        compress(model, _kv_recipe(), StepContext())


def test_calibrated_scales_and_evaluation_sees_the_cache(model, calib_ids):
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    recipe = _kv_recipe()
    preflight(model, recipe)
    report = compress(model, recipe, StepContext(calibration=calib_ids, batch_size=4))
    kv = report["steps"][-1]
    assert kv["method"] == "kv_cache" and [r["name"] for r in kv["layers"]] == [
        "model.layers.0.self_attn", "model.layers.1.self_attn"]
    for rec in kv["layers"]:
        assert rec["k_scale"] == pytest.approx(rec["k_absmax"] / 448) and rec["v_absmax"] > 0
    with torch.no_grad():
        on = model(ids).logits
        with kvquant.disabled(model):
            off = model(ids).logits
    assert 0 < float((on - off).abs().max()) < 0.5
    assert kvquant.quantizer_of(model.model.layers[0].self_attn).record["clip_rate"] >= 0.0


def test_generation_stores_fp8_keys_and_values(model, calib_ids):
    """With a real DynamicCache (generation), what the cache holds is FP8 times the calibrated scales: keys after
    the rotary embedding, as vLLM's FP8 cache stores them."""
    from transformers import DynamicCache

    compress(model, _kv_recipe([{"method": "rtn", "bits": 8, "group_size": -1}]),
             StepContext(calibration=calib_ids, batch_size=4))
    cache = DynamicCache(config=model.config)
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
        model(ids[:, :1], cache=cache, use_cache=True)  # one decode step
    assert cache.get_seq_length() == 11
    for i, layer in enumerate(model.model.layers):
        q = kvquant.quantizer_of(layer.self_attn)
        keys, values = cache.layers[i].keys, cache.layers[i].values
        assert _on_fp8_grid(keys, float(q.k_scale)) and _on_fp8_grid(values, float(q.v_scale))
    with torch.no_grad(), kvquant.disabled(model):
        plain = DynamicCache(config=model.config)
        model(ids, cache=plain, use_cache=True)
    assert not _on_fp8_grid(plain.layers[0].keys, float(kvquant.quantizer_of(model.model.layers[0].self_attn).k_scale))
