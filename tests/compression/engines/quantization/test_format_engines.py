"""The deployment-format steps (fp8, int8, nvfp4, mxfp4): registration, calibration needs, what they do to the
layers, activation quantization in the evaluation, the per-layer report, model-dependent checks, and a job."""

from __future__ import annotations

import json

import pytest
import torch

from presso.compression.core import actquant
from presso.compression.core.context import StepContext
from presso.compression.core.floatquant import FP8_MAX, static_act_scale
from presso.compression.errors import InvalidRecipe
from presso.compression.pipeline import compress, preflight
from presso.compression.recipe import methods_catalog, parse_recipe

VOCAB = 300


def _llama(hidden: int = 128, inter: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _run(model, steps, calib):
    recipe = parse_recipe({"steps": steps})
    preflight(model, recipe)
    return compress(model, recipe, StepContext(calibration=calib if recipe.needs_calibration else None, batch_size=4))


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))


def test_listed_with_schemas_and_presets():
    catalog = {m["method"]: m for m in methods_catalog()}
    for method in ("fp8", "int8", "nvfp4", "mxfp4"):
        assert method in catalog and catalog[method]["schema"]["properties"]
    assert catalog["fp8"]["schema"]["properties"]["scheme"]["enum"] == ["FP8_DYNAMIC", "FP8", "FP8_BLOCK"]
    assert catalog["nvfp4"]["schema"]["properties"]["scheme"]["enum"] == ["NVFP4", "NVFP4A16"]
    from presso.compression.registry import unregistered_methods

    assert unregistered_methods() == []


@pytest.mark.parametrize(("steps", "needs"), [
    ([{"method": "fp8"}], False), ([{"method": "fp8", "scheme": "FP8"}], True),
    ([{"method": "fp8", "scheme": "FP8_BLOCK"}], False), ([{"method": "int8"}], False),
    ([{"method": "int8", "rounding": "gptq"}], True), ([{"method": "int8", "rounding": "rtn",
                                                        "activations": "static_tensor"}], True),
    ([{"method": "nvfp4"}], True), ([{"method": "nvfp4", "scheme": "NVFP4A16"}], False),
    ([{"method": "mxfp4"}], False), ([{"method": "rtn"}, {"method": "fp8"}], False),
])
def test_calibration_only_where_the_scheme_needs_it(steps, needs):
    assert parse_recipe({"steps": steps}).needs_calibration is needs


def test_bad_parameters_are_refused():
    from pydantic import ValidationError

    for step in ({"method": "fp8", "scheme": "FP9"}, {"method": "int8", "rounding": "awq"},
                 {"method": "mxfp4", "bits": 4}, {"method": "nvfp4", "scheme": "MXFP4"}):
        with pytest.raises(ValidationError):
            parse_recipe({"steps": [step]})


@pytest.mark.parametrize(("steps", "kind", "strategy", "act"), [
    ([{"method": "fp8"}], "fp8", "channel", ("fp8", "token", True)),
    ([{"method": "fp8", "scheme": "FP8"}], "fp8", "tensor", ("fp8", "tensor", False)),
    ([{"method": "fp8", "scheme": "FP8_BLOCK"}], "fp8", "block", ("fp8", "group", True)),
    ([{"method": "fp8", "activations": "none"}], "fp8", "channel", None),
    ([{"method": "int8"}], "int8", "channel", ("int8", "token", True)),
    ([{"method": "int8", "rounding": "gptq"}], "int8", "channel", ("int8", "token", True)),
    ([{"method": "int8", "rounding": "rtn", "activations": "static_tensor"}], "int8", "channel",
     ("int8", "tensor", False)),
    ([{"method": "nvfp4"}], "nvfp4", "tensor_group", ("nvfp4", "tensor_group", "local")),
    ([{"method": "nvfp4", "scheme": "NVFP4A16"}], "nvfp4", "tensor_group", None),
    ([{"method": "mxfp4"}], "mxfp4", "group", ("mxfp4", "group", True)),
    ([{"method": "mxfp4", "scheme": "MXFP4A16", "scale_rule": "floor"}], "mxfp4", "group", None),
])
def test_layers_hold_their_format_and_activation_quantizer(steps, kind, strategy, act, calib, ids):
    model = _llama()
    ref = model(ids).logits
    report = _run(model, steps, calib)
    layers = report["steps"][0]["layers"]
    assert len(layers) == 14
    lin = model.model.layers[1].mlp.down_proj
    fw = lin.presso_format
    assert (fw.kind, fw.strategy) == (kind, strategy)
    assert torch.equal(lin.weight, fw.dequantize())  # the module computes with what the artifact stores
    q = actquant.quantizer_of(lin)
    assert (q is None) == (act is None)
    if q is not None:
        assert (q.scheme.kind, q.scheme.strategy, q.scheme.dynamic) == act
    with torch.no_grad():
        out = model(ids).logits
        with actquant.disabled(model):
            weight_only = model(ids).logits
    assert out.isfinite().all() and not torch.equal(out, ref)
    assert torch.equal(out, weight_only) == (act is None)  # activations quantized exactly where the scheme says
    rec = next(r for r in layers if r["name"] == "model.layers.1.mlp.down_proj")
    assert rec["format"] == kind and 0 < rec["rel_error"] < 0.25 and rec["bits_per_weight"] >= 4.25
    if act is not None:  # the forward above is what the report now holds (calibration statistics were reset)
        a = rec["act"]
        assert a["tokens"] == ids.numel() and 0 <= a["clip_rate"] < 0.2
        assert 0 < a["token_absmax_min"] <= a["token_absmax_max"]


def test_static_scales_come_from_calibrated_absmax(calib):
    model = _llama()
    captured = {"max": 0.0}
    lin = model.model.layers[0].self_attn.q_proj

    def hook(_m, args, _out):
        captured["max"] = max(captured["max"], float(args[0].abs().amax()))

    handle = lin.register_forward_hook(hook)
    with torch.no_grad():
        model(calib)
    handle.remove()
    report = _run(model, [{"method": "fp8", "scheme": "FP8"}], calib)
    q = actquant.quantizer_of(lin)
    assert q.calib_absmax == pytest.approx(captured["max"])  # block 0 sees the original inputs
    assert q.static_scale.item() == pytest.approx(captured["max"] / FP8_MAX)
    rec = report["steps"][0]["layers"][0]
    assert rec["act"]["static_scale"] == pytest.approx(captured["max"] / FP8_MAX)
    assert "tokens" not in rec["act"]  # nothing has run since the step
    report = _run(_llama(), [{"method": "nvfp4"}], calib)
    rec = report["steps"][0]["layers"][0]
    assert rec["act"]["static_scale"] == pytest.approx(static_act_scale("nvfp4", torch.tensor(captured["max"])).item())


def test_int8_gptq_beats_rtn_on_output_error(calib):
    from presso.compression.core.layout import get_weight

    errs = {}
    for rounding in ("rtn", "gptq"):
        model = _llama()
        w = {n: get_weight(m) for n, m in model.named_modules() if n.endswith("o_proj")}
        _run(model, [{"method": "int8", "rounding": rounding, "activations": "none"}], calib)
        errs[rounding] = sum(float((get_weight(m) - w[n]).norm()) for n, m in model.named_modules() if n in w)
        assert model.model.layers[0].self_attn.o_proj.presso_quant.bits == 8  # int8 weight-only: pack-quantized
    assert errs["gptq"] != errs["rtn"]


def test_fp8_block_falls_back_per_token_on_narrow_widths(calib):
    model = _llama(hidden=96, inter=256)  # 96 is not a multiple of 128; down_proj's 256 is
    report = _run(model, [{"method": "fp8", "scheme": "FP8_BLOCK"}], calib)
    recs = {r["name"].rsplit(".", 1)[-1]: r for r in report["steps"][0]["layers"]}
    assert recs["q_proj"]["act"]["strategy"] == "token" and "128" in recs["q_proj"]["note"]
    assert recs["down_proj"]["act"]["strategy"] == "group" and "note" not in recs["down_proj"]
    assert model.model.layers[0].self_attn.q_proj.presso_format.scale.shape == (1, 1)  # 96x96: one ragged block


@pytest.mark.parametrize("method", ["nvfp4", "mxfp4"])
def test_widths_the_format_cannot_group_fail_before_any_work(method):
    model = _llama(hidden=40, inter=64)  # 40 is a multiple of neither 16 nor 32
    with pytest.raises(InvalidRecipe, match="not a multiple of"):
        preflight(model, parse_recipe({"steps": [{"method": method}]}))
    preflight(model, parse_recipe({"steps": [{"method": "fp8"}]}))  # fp8 takes any width


def test_a_later_weight_step_replaces_the_codes():
    model = _llama()
    compress(model, parse_recipe({"steps": [{"method": "fp8"}, {"method": "rtn", "bits": 4, "group_size": 32}]}),
             StepContext())
    lin = model.model.layers[0].mlp.up_proj
    assert not hasattr(lin, "presso_format") and lin.presso_quant.bits == 4


def test_job_evaluates_with_quantized_activations_and_reports_them(tmp_path):
    """run_local: the gate's KL is the W4A4 model's (larger than the same weights' without activation
    quantization), bits_per_weight counts codes and scales, report.json has each layer's activation stats."""
    from presso.compression.job import run_local
    from presso.compression.spec import LocalJobSpec

    model_dir = tmp_path / "model"
    _llama().save_pretrained(model_dir)
    spec = LocalJobSpec(model_uri=str(model_dir), out_dir=tmp_path / "out",
                        recipe=parse_recipe({"steps": [{"method": "nvfp4"}]}),
                        calibration={"samples": 4, "seq_len": 32},
                        evaluation={"windows": 2, "seq_len": 32, "latency": False})
    m = run_local(spec).metrics
    assert m["bits_per_weight"] == pytest.approx(4.5 + 32 / (128 * 14 * 128), abs=0.01)
    layers = json.loads((spec.out_dir / "report.json").read_text())["layers"]
    assert len(layers) == 14
    for rec in layers:
        a = rec["act"]
        assert a["format"] == "nvfp4" and a["tokens"] > 0 and 0 <= a["clip_rate"] < 0.5 and a["static_scale"] > 0
    manifest = json.loads((spec.out_dir / "presso.json").read_text())
    assert manifest["forms"] == ["dense", "nvfp4-pack-quantized"]
    assert manifest["loaders"] == ["presso.load", "transformers", "vllm"]
    # the same weights without activation quantization are closer to the original: the gate saw W4A4
    from presso.compression.eval.perplexity import compare
    from presso.load import load

    loaded = load(spec.out_dir)
    windows = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(5))
    orig = _llama()
    w4a4 = compare(orig, loaded, windows, torch.device("cpu"))["kl"]
    with actquant.disabled(loaded):
        w4a16 = compare(orig, loaded, windows, torch.device("cpu"))["kl"]
    assert w4a4 > w4a16 > 0
