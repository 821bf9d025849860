"""smoothquant (issue 19): the scales against hand-computed values, the fold leaves the model's function unchanged
(logits to float32 tolerance), it lowers INT8 / FP8 W8A8 error on a tiny model with planted activation outliers,
the alpha search and per-layer alphas, the recipe order, and the methods catalog."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from presso.compression.core.context import StepContext
from presso.compression.engines.quantization.smoothquant.smooth_math import (
    search_alpha,
    smoothing_scales,
    weight_maxima,
)
from presso.compression.pipeline import compress, preflight
from presso.compression.recipe import methods_catalog, parse_recipe

VOCAB = 300
OUTLIERS = [3, 17, 60]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _llama(outliers: bool = True):
    """A tiny Llama whose norms make a few channels of every block's linear inputs ~40x larger (the outliers
    SmoothQuant addresses: LLM activations have a few such channels, consistently across tokens)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    if outliers:
        with torch.no_grad():
            for layer in model.model.layers:
                for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                    norm.weight[OUTLIERS] = 40.0
    return model


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))


def _run(model, steps, calib):
    recipe = parse_recipe({"steps": steps})
    preflight(model, recipe)
    return compress(model, recipe, StepContext(calibration=calib, batch_size=4))


def _rel_err(model, ref, ids) -> float:
    with torch.no_grad():
        out = model(ids).logits
    return float((out - ref).pow(2).mean() / ref.pow(2).mean())


def test_listed_with_schema_and_registered():
    catalog = {m["method"]: m for m in methods_catalog()}
    sq = catalog["smoothquant"]
    assert sq["needs_calibration"] and not sq["lossy"]
    props = sq["schema"]["properties"]
    assert props["alpha"]["default"] == 0.5 and props["alpha"]["minimum"] == 0 and props["alpha"]["maximum"] == 1
    assert {"overrides", "search", "grid", "search_format", "producers"} <= set(props)
    from presso.compression.registry import registered_methods

    assert "smoothquant" in registered_methods()


def test_config_validation_and_order():
    with pytest.raises(ValidationError, match="alpha"):
        parse_recipe({"steps": [{"method": "smoothquant", "alpha": 1.5}]})
    with pytest.raises(ValidationError, match="extra"):
        parse_recipe({"steps": [{"method": "smoothquant", "migration": 0.5}]})
    with pytest.raises(ValidationError, match="must come before every lossy step"):
        parse_recipe({"steps": [{"method": "int8"}, {"method": "smoothquant"}]})
    for after in ({"method": "int8"}, {"method": "fp8"}, {"method": "gptq", "bits": 8}):
        assert parse_recipe({"steps": [{"method": "smoothquant"}, after]}).needs_calibration


def test_scales_hand_computed():
    x_max = torch.tensor([4.0, 1.0, 9.0, 0.0])
    w_max = torch.tensor([1.0, 4.0, 0.0, 2.0])
    s = smoothing_scales(x_max, w_max, 0.5)
    # sqrt(4)/sqrt(1)=2, sqrt(1)/sqrt(4)=0.5, zero weights keep x_max=9, dead activation clamps at 1e-5
    torch.testing.assert_close(s, torch.tensor([2.0, 0.5, 9.0, 1e-5]))
    torch.testing.assert_close(smoothing_scales(x_max[:2], w_max[:2], 1.0), torch.tensor([4.0, 1.0]))
    torch.testing.assert_close(weight_maxima([torch.tensor([[1.0, -3.0]]), torch.tensor([[-2.0, 1.0]])]),
                               torch.tensor([2.0, 3.0]))


def test_search_never_worse_than_unsmoothed():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=gen)
    x[:, 5] *= 50
    w = torch.randn(32, 64, generator=gen)
    alpha, errors = search_alpha(x, [w], x.abs().amax(0), 10, "int8")
    assert alpha is not None and 0 < alpha <= 1
    assert errors[f"{alpha:g}"] == min(errors.values()) < errors["none"] / 2
    alpha, errors = search_alpha(torch.randn(256, 64, generator=gen), [w], torch.ones(64), 4, "fp8")
    assert set(errors) == {"none", "0", "0.25", "0.5", "0.75", "1"}


@pytest.mark.parametrize("producers", ["norm", "all"])
def test_fold_is_function_preserving(calib_ids, ids, producers):
    """Before quantization the smoothed model computes the same logits (float32 rounding only)."""
    model = _llama()
    with torch.no_grad():
        ref = model(ids).logits
    report = _run(model, [{"method": "smoothquant", "producers": producers}], calib_ids)
    with torch.no_grad():
        out = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    groups = report["steps"][0]["groups"]
    norms = [g for g in groups if g["producer"] and g["producer"].endswith("layernorm")]
    assert len(norms) == 4 and all(g["alpha"] == 0.5 for g in norms)  # q/k/v and gate/up per block
    assert all(g["act_outlier_ratio_after"] < g["act_outlier_ratio"] / 3 for g in norms)
    assert torch.all(model.model.layers[0].input_layernorm.weight[OUTLIERS] < 40.0 / 3)
    linear = [g for g in groups if g["alpha"] is not None and not g["producer"].endswith("layernorm")]
    assert (len(linear) > 0) == (producers == "all")  # up_proj -> down_proj, verified exact


@pytest.mark.parametrize(("fmt", "steps"), [
    ("int8", [{"method": "int8"}]),
    ("int8", [{"method": "int8", "activations": "static_tensor"}]),
    ("int8", [{"method": "int8", "rounding": "gptq"}]),
])
def test_w8a8_error_drops_with_smoothquant(calib_ids, ids, fmt, steps):
    """INT8 W8A8 (dynamic per token, static per tensor, GPTQ rounding): the output error at least halves. (FP8's
    floating-point grid keeps small channels' precision beside an outlier, so smoothing gains little there; on
    this model FP8 static measured 0.0164 without and 0.0201 with alpha 0.5: not asserted.)"""
    base = _llama()
    with torch.no_grad():
        ref = base(ids).logits
    plain = copy.deepcopy(base)
    _run(plain, steps, calib_ids)
    smooth = copy.deepcopy(base)
    _run(smooth, [{"method": "smoothquant"}, *steps], calib_ids)
    searched = copy.deepcopy(base)
    rep = _run(searched, [{"method": "smoothquant", "search": True, "search_format": fmt}, *steps], calib_ids)
    e_plain, e_smooth, e_search = (_rel_err(m, ref, ids) for m in (plain, smooth, searched))
    assert e_smooth < e_plain / 2, (e_plain, e_smooth)
    assert e_search < e_plain / 2, (e_plain, e_search)
    for g in rep["steps"][0]["groups"]:
        if "search" in g:
            assert g["search"]["error_vs_unsmoothed"] <= 1.0


def test_without_outliers_nothing_breaks(calib_ids, ids):
    base = _llama(outliers=False)
    with torch.no_grad():
        ref = base(ids).logits
    plain = copy.deepcopy(base)
    _run(plain, [{"method": "int8"}], calib_ids)
    smooth = copy.deepcopy(base)
    _run(smooth, [{"method": "smoothquant", "search": True}, {"method": "int8"}], calib_ids)
    assert _rel_err(smooth, ref, ids) < 1.5 * _rel_err(plain, ref, ids)


def test_per_layer_alpha_and_targets(calib_ids):
    model = _llama()
    rep = _run(model, [{"method": "smoothquant", "targets": ["re:layers\\.1\\."],
                        "overrides": [{"pattern": "gate_proj", "alpha": 0.8}]}], calib_ids)
    groups = {tuple(g["linears"]): g for g in rep["steps"][0]["groups"]}
    assert all(n.startswith("model.layers.1.") for g in groups for n in g)
    assert groups[("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj")]["alpha"] == 0.8
    qkv = tuple(f"model.layers.1.self_attn.{p}_proj" for p in "qkv")
    assert groups[qkv]["alpha"] == 0.5
    assert torch.all(model.model.layers[0].input_layernorm.weight[OUTLIERS] == 40.0)  # block 0 untouched


def test_chains_before_gptq(calib_ids, ids):
    base = _llama()
    with torch.no_grad():
        ref = base(ids).logits
    smooth = copy.deepcopy(base)
    rep = _run(smooth, [{"method": "smoothquant"}, {"method": "gptq", "bits": 8, "group_size": -1}], calib_ids)
    assert [s["method"] for s in rep["steps"]] == ["smoothquant", "gptq"]
    assert _rel_err(smooth, ref, ids) < 1e-3


@pytest.mark.parametrize("transform", [{"method": "smoothquant"}, {"method": "rotate"}])
def test_eora_after_a_transform_compares_like_with_like(calib_ids, ids, transform):
    """eora fits the difference to the weights from before the lossy steps: the transform updates them, so the
    residual still lowers the error (with the untransformed originals it would add the transform's change)."""
    base = _llama()
    with torch.no_grad():
        ref = base(ids).logits
    rtn = {"method": "rtn", "bits": 3, "group_size": 32}
    without, with_eora = copy.deepcopy(base), copy.deepcopy(base)
    _run(without, [transform, rtn], calib_ids)
    _run(with_eora, [transform, rtn, {"method": "eora", "rank": 16}], calib_ids)
    assert _rel_err(with_eora, ref, ids) < _rel_err(without, ref, ids)
