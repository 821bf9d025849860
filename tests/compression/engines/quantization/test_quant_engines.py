"""RTN / GPTQ / AWQ / HQQ engines on tiny random-weight models of several architectures."""

from __future__ import annotations

import copy

import pytest
import torch

from presso.compression.configs.quantization import (
    AWQConfig,
    GPTQConfig,
    HQQConfig,
    QuantArgs,
    QuantOverride,
    RTNConfig,
)
from presso.compression.core.context import StepContext
from presso.compression.core.layout import find_layout, get_weight, is_linear, quantized_of
from presso.compression.errors import InvalidRecipe, NoTargetModules
from presso.compression.registry import engine_for


def _run(model, cfg, calib=None):
    ctx = StepContext(calibration=calib, batch_size=4)
    return engine_for(cfg).apply_(model, cfg, ctx)


def _hidden(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _check_all_quantized(model, report):
    layout = find_layout(model)
    names = {f"{layout.prefix}.{n}" for n, m in layout.blocks.named_modules() if is_linear(m)}
    done = {r["name"] for r in report["layers"]}
    assert done == names  # never silently skip a layer
    for name in names:
        mod = model.get_submodule(name)
        qw = quantized_of(mod)
        assert qw is not None, name
        assert torch.equal(qw.dequantize().to(get_weight(mod).dtype), get_weight(mod))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "opt", "bert"])
def test_gptq_runs_on_every_architecture(arch, make_model, calib):
    model = make_model(arch)
    ref = _hidden(model, calib[:2])
    report = _run(model, GPTQConfig(bits=4, group_size=32), calib)
    _check_all_quantized(model, report)
    assert all(0 < r["output_error"] < 0.5 for r in report["layers"])
    out = _hidden(model, calib[:2])
    assert torch.isfinite(out).all()
    assert float((out - ref).norm() / ref.norm()) < 0.5


def test_group_that_does_not_divide_is_resolved(make_model, calib):
    model = make_model("llama")
    report = _run(model, GPTQConfig(bits=4, group_size=64), calib)
    groups = {r["name"].rsplit(".", 1)[-1]: r["group_size"] for r in report["layers"]}
    assert groups["q_proj"] == 48  # K = 96: largest divisor <= 64
    assert groups["down_proj"] == 64  # K = 192


def test_gptq_beats_rtn_on_layer_output(make_model, calib):
    base = make_model("llama")
    rtn, gptq = copy.deepcopy(base), copy.deepcopy(base)
    _run(rtn, RTNConfig(bits=3, group_size=32))
    _run(gptq, GPTQConfig(bits=3, group_size=32), calib)
    ref = _hidden(base, calib)
    err_rtn = float((_hidden(rtn, calib) - ref).norm())
    err_gptq = float((_hidden(gptq, calib) - ref).norm())
    assert err_gptq < err_rtn


def test_act_order_static_groups_and_dynamic_rejected(make_model, calib):
    model = make_model("llama")
    report = _run(model, GPTQConfig(bits=4, group_size=32, act_order=True), calib)
    assert all(r["output_error"] < 0.3 for r in report["layers"])
    with pytest.raises(InvalidRecipe, match="g_idx"):
        _run(make_model("llama"), GPTQConfig(bits=4, group_size=32, act_order=True, static_groups=False), calib)
    # per channel needs no g_idx: allowed
    _run(make_model("llama"), GPTQConfig(bits=4, group_size=-1, act_order=True, static_groups=False), calib)


def test_gptq_is_deterministic(make_model, calib):
    a, b = make_model("qwen2"), make_model("qwen2")
    _run(a, GPTQConfig(bits=4, group_size=32, act_order=True), calib)
    _run(b, GPTQConfig(bits=4, group_size=32, act_order=True), calib)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("cfg", [
    RTNConfig(bits=4, overrides=[QuantOverride(pattern="down_proj", bits=8)]),
    GPTQConfig(bits=4, overrides=[QuantOverride(pattern="down_proj", bits=8),
                                  QuantOverride(pattern="k_proj", skip=True)]),
    AWQConfig(bits=4, grid=5, overrides=[QuantOverride(pattern="down_proj", bits=8)]),
    HQQConfig(bits=4, iters=5, overrides=[QuantOverride(pattern="down_proj", bits=8)]),
], ids=lambda c: c.method)
def test_overrides_visible_in_report(cfg, make_model, calib):
    model = make_model("llama")
    report = _run(model, cfg, calib)
    by_leaf: dict[str, set] = {}
    for r in report["layers"]:
        by_leaf.setdefault(r["name"].rsplit(".", 1)[-1], set()).add(r.get("bits", r.get("skipped")))
    assert by_leaf["down_proj"] == {8}
    assert by_leaf["up_proj"] == {4}
    if cfg.method == "gptq":
        assert by_leaf["k_proj"] == {"override"}
        assert quantized_of(model.model.layers[0].self_attn.k_proj) is None


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq", "hqq"])
def test_target_matching_nothing_fails_early(method, make_model, calib):
    cfg = {"rtn": RTNConfig, "gptq": GPTQConfig, "awq": AWQConfig, "hqq": HQQConfig}[method](targets=["nope_proj"])
    with pytest.raises(NoTargetModules):
        _run(make_model("llama"), cfg, calib)


def test_awq_folds_into_norms_and_linears_and_keeps_function(make_model, calib):
    model = make_model("llama")
    report = _run(model, AWQConfig(bits=8, group_size=32, grid=10), calib)
    producers = {r["name"].rsplit(".", 1)[-1]: (r["awq"]["producer"] or "").rsplit(".", 1)[-1]
                 for r in report["layers"]}
    post = "post_attention_layernorm"
    assert producers == {"q_proj": "input_layernorm", "k_proj": "input_layernorm", "v_proj": "input_layernorm",
                         "o_proj": "v_proj", "gate_proj": post, "up_proj": post, "down_proj": "up_proj"}
    classes = {type(m).__name__ for m in model.modules()}
    assert classes == {type(m).__name__ for m in make_model("llama").modules()}  # still a standard architecture


def test_awq_reports_groups_without_foldable_producer(make_model, calib):
    # GQA: v_proj (32 outputs) cannot absorb o_proj's 96 input scales; gpt2: GELU between c_fc and c_proj
    for arch, leaf in (("llama_gqa", "o_proj"), ("gpt2", "c_proj")):
        model = make_model(arch)
        report = _run(model, AWQConfig(bits=4, group_size=32, grid=4), calib)
        notes = [r["awq"] for r in report["layers"] if r["name"].endswith(leaf) and "mlp" in r["name"] or
                 r["name"].endswith(leaf) and arch == "llama_gqa"]
        assert notes and all(n["producer"] is None and n["reason"] for n in notes)
        _check_all_quantized(model, report)


def test_awq_beats_rtn_and_gptq_solver_runs(make_model, calib):
    base = make_model("llama")
    with torch.no_grad():  # give the activations outlier channels, as in real models
        for layer in base.model.layers:
            layer.input_layernorm.weight[:4] = 20.0
            layer.post_attention_layernorm.weight[:4] = 20.0
    ref = _hidden(base, calib)
    errs = {}
    for cfg in (RTNConfig(bits=3, group_size=32), AWQConfig(bits=3, group_size=32, grid=10),
                AWQConfig(bits=3, group_size=32, grid=10, solver="gptq")):
        model = copy.deepcopy(base)
        _run(model, cfg, calib)
        errs[f"{cfg.method}-{getattr(cfg, 'solver', '')}"] = float((_hidden(model, calib) - ref).norm())
    assert errs["awq-rtn"] < errs["rtn-"]
    assert errs["awq-gptq"] < errs["rtn-"]


def test_hqq_engine_asymmetric_integer_zero_points(make_model):
    model = make_model("qwen2")
    report = _run(model, HQQConfig(bits=4, group_size=32))
    assert all(not r["symmetric"] for r in report["layers"])
    qw = quantized_of(model.model.layers[0].mlp.up_proj)
    assert qw.zero is not None and qw.zero.dtype == torch.int8
    assert int(qw.zero.min()) >= -8 and int(qw.zero.max()) <= 7


def test_awq_block_verifier_leaves_weights_untouched(make_model, calib):
    from presso.compression.core.sequential import BlockInputs, forward_block
    from presso.compression.engines.quantization.awq.engine import Verifier, calibration_subset

    model = make_model("llama")
    block = model.model.layers[0]
    hidden = [model.model.embed_tokens(calib[:4]), model.model.embed_tokens(calib[4:])]
    pos = torch.arange(calib.shape[1]).unsqueeze(0)
    kw = {"position_embeddings": model.model.rotary_emb(hidden[0], pos)}
    inputs = BlockInputs(hidden=hidden, kwargs=[kw, kw])
    subset = calibration_subset(inputs, 3)
    assert len(subset.hidden) == 1  # the first batch already holds 4 >= 3 sequences
    before = {k: v.clone() for k, v in block.state_dict().items()}
    v = Verifier(block, subset, forward_block(block, subset))
    mlp = block.mlp
    scheme = QuantArgs(bits=3, group_size=32)
    s = torch.rand(mlp.gate_proj.in_features) + 0.5
    err = v.error(block.post_attention_layernorm, "norm", [mlp.gate_proj, mlp.up_proj],
                  {mlp.gate_proj: scheme, mlp.up_proj: scheme}, s)
    assert err > 0  # 3-bit weights change the block output
    assert all(torch.equal(before[k], t) for k, t in block.state_dict().items())
    unquantized = v.error(block.post_attention_layernorm, "norm", [mlp.gate_proj, mlp.up_proj], {}, s)
    assert unquantized < 1e-6 * err  # the fold alone is exact


def test_awq_verify_reranks_only_the_given_candidates(make_model, calib):
    def notes(verify: int) -> list[dict]:
        report = _run(make_model("llama"), AWQConfig(bits=3, group_size=32, grid=10, verify=verify, verify_samples=8),
                      calib)
        return [r["awq"] for r in report["layers"] if r["awq"]["producer"]]

    one = notes(1)  # a single candidate: the linear-level choice, re-measured but never replaced
    assert one and all(n["alpha"] == n["alpha_linear"] and n["block_error_vs_linear_choice"] == 1.0 for n in one)
    four = notes(4)
    assert four and all(0 < n["block_error_vs_linear_choice"] <= 1.0 and 0 <= n["alpha"] < 1 for n in four)
    assert "block_error_vs_linear_choice" not in notes(0)[0]
