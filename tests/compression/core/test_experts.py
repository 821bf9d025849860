"""The expert view (compression.core.experts): fused MoE experts as per-expert linears.

Tiny random Mixtral / Qwen3-MoE models: the unfused forward equals the fused one; every expert linear is
selected and compressed; the router stays dense; per-expert token counts are the routed tokens; experts that
receive too few tokens fall back to data-free rounding in the same scheme and the report says so.
"""

from __future__ import annotations

import copy

import pytest
import torch

from presso.compression.core.context import StepContext
from presso.compression.core.experts import UnfusedExperts, expert_names, unfuse_experts_
from presso.compression.core.targets import targeted_linears
from presso.compression.errors import UnsupportedModel
from presso.compression.pipeline import compress
from presso.compression.recipe import parse_recipe

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
CALIB = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(4))
BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=False)


def _moe(model_type: str, **extra: object) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    moe = {"mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
           "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, head_dim=16)}
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, **{**BASE, **moe[model_type], **extra})
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def mixtral() -> torch.nn.Module:
    return _moe("mixtral")


@pytest.fixture(scope="module")
def qwen3_moe() -> torch.nn.Module:
    return _moe("qwen3_moe")


def test_names_come_from_the_checkpoint_conversion_mapping() -> None:
    assert expert_names("mixtral") == ("w1", "w3", "w2")
    assert expert_names("qwen3_moe") == ("gate_proj", "up_proj", "down_proj")
    assert expert_names("llama") == ("gate_proj", "up_proj", "down_proj")  # no mapping: the default


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
def test_unfused_forward_equals_fused(arch: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(arch)
    ref = model(IDS).logits
    view = copy.deepcopy(model)
    assert unfuse_experts_(view) == 2
    assert unfuse_experts_(view) == 0  # idempotent
    mods = [m for m in view.modules() if isinstance(m, UnfusedExperts)]
    assert len(mods) == 2 and all(len(m) == 4 for m in mods)
    torch.testing.assert_close(view(IDS).logits, ref, rtol=0, atol=1e-5)
    fused = model.model.layers[0].mlp.experts
    gate, up, down = mods[0][3].linears()
    inter = gate.weight.shape[0]
    assert torch.equal(gate.weight, fused.gate_up_proj[3, :inter])
    assert torch.equal(up.weight, fused.gate_up_proj[3, inter:])
    assert torch.equal(down.weight, fused.down_proj[3])


def test_every_expert_is_targeted_and_the_router_is_not(qwen3_moe: torch.nn.Module) -> None:
    model = copy.deepcopy(qwen3_moe)
    cfg = parse_recipe({"steps": [{"method": "rtn", "bits": 4}]}).steps[0]
    _, chosen = targeted_linears(model, cfg)
    names = [n for lins in chosen.values() for n in lins]
    assert sum(".experts." in n for n in names) == 2 * 4 * 3
    assert not any(n.endswith(".gate") for n in names)


def test_tokens_seen_are_the_routed_tokens(mixtral: torch.nn.Module) -> None:
    model = copy.deepcopy(mixtral)
    rep = compress(model, parse_recipe({"steps": [{"method": "gptq", "bits": 4, "group_size": 16,
                                                   "expert_min_tokens": 0}]}),
                   StepContext(calibration=CALIB, batch_size=4))["steps"][0]
    rows = [r for r in rep["layers"] if "expert" in r]
    assert len(rows) == 24 and rep["experts"]["expert_linears_compressed"] == 24
    per_layer: dict[str, int] = {}
    for r in rows:
        if r["name"].endswith(".w1"):
            layer = r["name"].split(".mlp.")[0]
            per_layer[layer] = per_layer.get(layer, 0) + r["tokens_seen"]
    # top-2 routing: every calibration token reaches exactly two experts of each layer
    assert per_layer == {f"model.layers.{i}": 2 * CALIB.numel() for i in range(2)}


@pytest.mark.parametrize("method", [
    {"method": "gptq", "bits": 4, "group_size": 16},
    {"method": "awq", "bits": 4, "group_size": 16},
    {"method": "sparsegpt", "sparsity": 0.5},
    {"method": "wanda", "sparsity": 0.5},
])
def test_starved_experts_fall_back_in_the_same_scheme(method: dict, mixtral: torch.nn.Module) -> None:
    model = copy.deepcopy(mixtral)
    # no expert can reach this many tokens: every expert falls back, and the report names each one
    step = {**method, "expert_min_tokens": 10 ** 6}
    rep = compress(model, parse_recipe({"steps": [step]}), StepContext(calibration=CALIB, batch_size=4))["steps"][0]
    experts = rep["experts"]
    assert experts["expert_linears"] == experts["expert_linears_compressed"] == 24
    assert len(experts["fallbacks"]) == 24
    assert all("expert_min_tokens" in why for why in experts["fallbacks"].values())
    rows = [r for r in rep["layers"] if "expert" in r]
    if "bits" in method:
        assert {(r["bits"], r["group_size"]) for r in rows} == {(4, 16)}
        assert all(r["fallback"].startswith("rtn:") for r in rows)
    else:
        assert all(r["fallback"].startswith("magnitude:") for r in rows)
        assert all(abs(r["sparsity"] - 0.5) < 1e-6 for r in rows)
    others = [r for r in rep["layers"] if "expert" not in r]
    assert others and not any("fallback" in r for r in others)  # attention had its calibration


def test_gpt_oss_layout_is_refused_not_skipped() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("gpt_oss", **{**BASE, "num_local_experts": 4, "num_experts_per_tok": 2,
                                             "head_dim": 16, "layer_types": ["full_attention"] * 2})
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(UnsupportedModel, match="GptOssExperts"):
        unfuse_experts_(model)


def test_route_all_keeps_the_output_and_feeds_every_expert(mixtral: torch.nn.Module) -> None:
    from presso.compression.core.experts import experts_modules, route_all_

    view = copy.deepcopy(mixtral)
    unfuse_experts_(view)
    ref = view(IDS).logits
    route_all_(view, True)
    torch.testing.assert_close(view(IDS).logits, ref, rtol=0, atol=1e-5)  # only the routed experts are summed

    model = copy.deepcopy(mixtral)
    step = {"method": "gptq", "bits": 4, "group_size": 16, "expert_calibration": "all",
            "expert_min_tokens": CALIB.numel()}
    rep = compress(model, parse_recipe({"steps": [step]}), StepContext(calibration=CALIB, batch_size=4))["steps"][0]
    assert rep["experts"]["fallbacks"] == {} and rep["experts"]["calibration_tokens"] == "all"
    assert {r["tokens_seen"] for r in rep["layers"] if "expert" in r} == {CALIB.numel()}
    assert not any(m.route_all for _, m in experts_modules(model))  # one step only


def test_awq_folds_inside_each_expert_only_where_exact(qwen3_moe: torch.nn.Module) -> None:
    """down_proj's producer is its own expert's up_proj (act(gate) * up is linear in up), never gate_proj,
    even for an expert the verification batch hardly reaches; gate/up have none (the norm also feeds the router)."""
    model = copy.deepcopy(qwen3_moe)
    rep = compress(model, parse_recipe({"steps": [{"method": "awq", "bits": 4, "group_size": 16}]}),
                   StepContext(calibration=CALIB, batch_size=4))["steps"][0]
    rows = {r["name"]: r["awq"] for r in rep["layers"] if "expert" in r}
    assert len(rows) == 24
    for name, note in rows.items():
        if name.endswith("down_proj"):
            assert note["producer"] == name.replace("down_proj", "up_proj")
        else:
            assert note["producer"] is None


def test_llama4_experts_are_refused_not_skipped() -> None:
    """Llama 4's experts take pre-sorted tokens (forward(hidden_states)) in a transposed layout."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("llama4_text", hidden_size=64, intermediate_size=32, intermediate_size_mlp=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               vocab_size=128, num_local_experts=4, num_experts_per_tok=1)
    with pytest.raises(UnsupportedModel, match="Llama4TextExperts"):
        unfuse_experts_(AutoModelForCausalLM.from_config(cfg))
