"""svd / svd_llm / eora engines on tiny random-weight Llama models, alone and chained."""

import copy

import pytest
import torch
from pydantic import ValidationError

from presso.compression.core.context import StepContext
from presso.compression.core.layout import find_layout, quantized_of
from presso.compression.engines.lowrank.modules import FactorizedLinear, LoRAResidualLinear
from presso.compression.errors import CalibrationRequired, InvalidRecipe
from presso.compression.pipeline import compress
from presso.compression.recipe import parse_recipe


def run(model, steps, calib=None):
    ctx = StepContext(calibration=calib, batch_size=4)
    return compress(model, parse_recipe({"steps": steps}), ctx)


def linears_of(model, cls):
    return {n: m for n, m in model.named_modules() if isinstance(m, cls)}


@pytest.mark.parametrize("steps", [
    [{"method": "svd", "ratio": 0.3}],
    [{"method": "svd_llm", "ratio": 0.3}],
    [{"method": "svd_llm", "ratio": 0.3, "allocation": "uniform", "rank_multiple": 8}],
])
def test_factorizes_every_target_within_budget(tiny_llama, calib_ids, steps):
    report = run(tiny_llama, steps, calib_ids)["steps"][0]
    fac = linears_of(tiny_llama, FactorizedLinear)
    assert len(fac) == 14 and not any(n.endswith("lm_head") for n in fac)
    if steps[0].get("rank_multiple"):  # rounding ranks down removes a little more
        assert all(m.rank % 8 == 0 for m in fac.values()) and 0.3 <= report["param_reduction"] < 0.45
    else:
        assert 0.3 <= report["param_reduction"] < 0.36
    if steps[0].get("allocation", "global") == "global" and steps[0]["method"] == "svd_llm":
        ratios = [r["params_after"] / r["params_before"] for r in report["layers"]]
        assert max(ratios) - min(ratios) > 0.05  # one budget, spent unevenly
        assert all(0 <= r["rel_output_error"] < 1 for r in report["layers"])
    with torch.no_grad():
        assert torch.isfinite(tiny_llama(calib_ids[:2]).logits).all()


def test_svd_by_energy_keeps_useless_factorizations_dense(tiny_llama):
    report = run(tiny_llama, [{"method": "svd", "energy": 0.999}])["steps"][0]
    assert all(r.get("kept_dense") for r in report["layers"])  # random weights: a flat spectrum
    assert not linears_of(tiny_llama, FactorizedLinear)


def _block0_qkv_errors(model, original, calib):
    """‖(W_orig - W_eff) X‖ of block 0's q/k/v on the calibration inputs (unchanged by compensation)."""
    attn = find_layout(model).blocks[0].self_attn
    seen = {}
    handle = attn.q_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(calib)
    handle.remove()
    x = seen["x"].double()
    oattn = find_layout(original).blocks[0].self_attn
    out = {}
    for leaf in ("q_proj", "k_proj", "v_proj"):
        mod, w0 = getattr(attn, leaf), getattr(oattn, leaf).weight.detach().double()
        delta = w0 - mod.weight.detach().double()
        res = (mod.lora_B @ mod.lora_A).detach().double()
        out[leaf] = (float((delta @ x.t()).norm()), float(((delta - res) @ x.t()).norm()))
    return out


def test_rtn_then_eora_applies_in_order_and_never_increases_layer_error(tiny_llama, calib_ids):
    original = copy.deepcopy(tiny_llama)
    report = run(tiny_llama, [{"method": "rtn", "bits": 3, "group_size": 32}, {"method": "eora", "rank": 8}], calib_ids)
    assert [s["method"] for s in report["steps"]] == ["rtn", "eora"]
    res = linears_of(tiny_llama, LoRAResidualLinear)
    assert len(res) == 14 and all(quantized_of(m) is not None and m.rank == 8 for m in res.values())
    assert all(r["output_error_after"] <= r["output_error_before"] for r in report["steps"][1]["layers"])
    for before, after in _block0_qkv_errors(tiny_llama, original, calib_ids[:4]).values():
        assert after < before
    rtn_only = copy.deepcopy(original)
    run(rtn_only, [{"method": "rtn", "bits": 3, "group_size": 32}])
    with torch.no_grad():
        ref = original(calib_ids).logits
        gap_eora = float((tiny_llama(calib_ids).logits - ref).norm())
        gap_rtn = float((rtn_only(calib_ids).logits - ref).norm())
    assert gap_eora < gap_rtn


def test_svd_llm_then_rtn_quantizes_the_factors(tiny_llama, calib_ids):
    run(tiny_llama, [{"method": "svd_llm", "ratio": 0.2}, {"method": "rtn", "bits": 4}], calib_ids)
    fac = linears_of(tiny_llama, FactorizedLinear)
    assert fac and all(quantized_of(m.A) is not None and quantized_of(m.B) is not None for m in fac.values())


def test_bad_input_is_rejected(tiny_llama, calib_ids):
    with pytest.raises(ValidationError, match="eora"):
        parse_recipe({"steps": [{"method": "eora", "rank": 8}]})
    with pytest.raises(ValidationError):
        parse_recipe({"steps": [{"method": "svd", "ratio": 1.0}]})
    with pytest.raises(InvalidRecipe, match="larger than min"):
        run(tiny_llama, [{"method": "rtn", "bits": 4}, {"method": "eora", "rank": 97}], calib_ids)
    with pytest.raises(InvalidRecipe, match="removes every"):
        run(tiny_llama, [{"method": "svd", "ratio": 0.995}])
    with pytest.raises(CalibrationRequired):
        run(tiny_llama, [{"method": "svd_llm", "ratio": 0.2}])
    from presso.compression.registry import engine_for

    cfg = parse_recipe({"steps": [{"method": "rtn"}, {"method": "eora"}]}).steps[1]
    with pytest.raises(InvalidRecipe, match="before the lossy"):
        engine_for(cfg).apply_(tiny_llama, cfg, StepContext(calibration=calib_ids))
    assert not linears_of(tiny_llama, (FactorizedLinear, LoRAResidualLinear))  # nothing touched
