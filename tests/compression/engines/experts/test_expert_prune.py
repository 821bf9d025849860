"""expert_prune and expert_merge (issue 20): tiny random Qwen3-MoE / Mixtral models with planted experts.

Every MoE layer has 8 experts, top-2. Router rows 0..3 are u, -u, v, -v and row 4 is zero, so the two largest
logits are always |x.u| and |x.v| >= 0 and expert 4 is never routed; expert 6's down projection is scaled by
1e-4, so it is routed but contributes almost nothing. REAP removes 4 then 6; frequency removes 4 first.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from presso.compression.configs import CONFIGS
from presso.compression.core.context import StepContext
from presso.compression.engines.experts.common import keep_experts_, moe_layers, update_config_
from presso.compression.errors import CompressionError
from presso.compression.io.artifact import write_model
from presso.compression.pipeline import compress, preflight
from presso.compression.recipe import parse_recipe
from presso.compression.registry import registered_methods

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
CALIB = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(4))
HELD_OUT = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(5))
BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=False)
MOE = {"mixtral": dict(num_local_experts=8, num_experts_per_tok=2),
       "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, head_dim=16,
                         norm_topk_prob=True)}  # as Qwen3-30B-A3B's config
NEVER, TINY = 4, 6


def _model(arch: str, **extra: object) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(arch, **{**BASE, **MOE[arch], **extra})
    return AutoModelForCausalLM.from_config(cfg).eval()


@torch.no_grad()
def _plant(model: nn.Module) -> nn.Module:
    """Expert 4 never routed, expert 6 routed with a ~0 output, in every MoE layer (fused parameters)."""
    for name, mod in model.named_modules():
        if name.endswith(".experts") and hasattr(mod, "down_proj"):
            router = model.get_submodule(name.rpartition(".")[0]).gate
            w = router.weight
            u, v = w[0].clone(), w[2].clone()
            w[1], w[3], w[NEVER] = -u, -v, 0.0
            mod.down_proj[TINY] *= 1e-4
    return model


@pytest.fixture(scope="module", params=["mixtral", "qwen3_moe"])
def planted(request: pytest.FixtureRequest) -> nn.Module:
    return _plant(_model(request.param))


def _recipe(*steps: dict) -> object:
    return parse_recipe({"steps": list(steps)})


def _ctx() -> StepContext:
    return StepContext(calibration=CALIB, batch_size=4)


def test_registered_with_a_strict_schema() -> None:
    assert "expert_prune" in registered_methods()
    cls = CONFIGS["expert_prune"]
    schema = cls.model_json_schema()
    assert {"ratio", "count", "criterion"} <= set(schema["properties"])
    with pytest.raises(ValueError):
        cls(ratio=0.25, experts=3)  # extra="forbid"
    assert cls(count=2).ratio is None
    from presso.compression.recipe import methods_catalog

    listed = {m["method"]: m for m in methods_catalog()}  # what GET /v1/methods serves
    assert "criterion" in listed["expert_prune"]["schema"]["properties"]


@pytest.mark.parametrize(("ratio", "removed"), [(0.25, 2), (0.5, 4)])
def test_prune_removes_the_planted_experts_and_loads(planted: nn.Module, ratio: float, removed: int,
                                                     tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from presso.load import load

    model = copy.deepcopy(planted)
    report = compress(model, _recipe({"method": "expert_prune", "ratio": ratio}), _ctx())["steps"][0]
    assert report["experts_before"] == 8 and report["experts_after"] == 8 - removed
    assert len(report["moe_layers"]) == 2
    for layer in report["moe_layers"]:
        assert len(layer["removed"]) == removed
        assert layer["tokens"][NEVER] == 0 and layer["tokens"][TINY] > 0
        assert {NEVER, TINY} <= set(layer["removed"])
    cfg = model.config
    key = "num_local_experts" if cfg.model_type == "mixtral" else "num_experts"
    assert getattr(cfg, key) == 8 - removed and cfg.num_experts_per_tok == 2
    for m in moe_layers(model, "check"):
        assert m.experts.num_experts == 8 - removed and m.router.weight.shape[0] == 8 - removed
    with torch.no_grad():
        ref = model(IDS).logits
    out = tmp_path / "artifact"
    write_model(model, None, out)
    saved = json.loads((out / "config.json").read_text())
    assert 8 - removed in {saved.get("num_experts"), saved.get("num_local_experts")}
    with torch.no_grad():
        for loaded in (load(out), AutoModelForCausalLM.from_pretrained(str(out)).eval()):
            torch.testing.assert_close(loaded(IDS).logits, ref, rtol=0, atol=1e-5)
            assert sum(p.numel() for p in loaded.parameters()) == report["params_after"]


def test_kept_experts_are_the_original_ones(planted: nn.Module) -> None:
    """The kept experts' weights and router rows are the original rows of the kept indices, in order."""
    model = copy.deepcopy(planted)
    before = {m.name: (m.router.weight.clone(), [ex.linears()[2].weight.clone() for ex in m.experts])
              for m in moe_layers(model, "check")}
    report = compress(model, _recipe({"method": "expert_prune", "count": 3}), _ctx())["steps"][0]
    for layer, m in zip(report["moe_layers"], moe_layers(model, "check"), strict=True):
        keep = [e for e in range(8) if e not in layer["removed"]]
        router, downs = before[m.name]
        assert torch.equal(m.router.weight, router[keep])
        for ex, e in zip(m.experts, keep, strict=True):
            assert torch.equal(ex.linears()[2].weight, downs[e])


def test_frequency_removes_the_never_routed_expert_first(planted: nn.Module) -> None:
    model = copy.deepcopy(planted)
    report = compress(model, _recipe({"method": "expert_prune", "count": 1, "criterion": "frequency"}),
                      _ctx())["steps"][0]
    assert [layer["removed"] for layer in report["moe_layers"]] == [[NEVER], [NEVER]]


def test_non_moe_model_is_unsupported() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    llama = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **BASE)).eval()
    recipe = _recipe({"method": "expert_prune", "ratio": 0.5})
    for run in (lambda: preflight(llama, recipe), lambda: compress(llama, recipe, _ctx())):
        with pytest.raises(CompressionError) as err:
            run()
        assert err.value.code == "unsupported_model" and "mixture-of-experts" in str(err.value)


@pytest.mark.parametrize("step", [{"count": 7}, {"ratio": 0.01}])
def test_impossible_amounts_are_invalid_recipes(planted: nn.Module, step: dict) -> None:
    model = copy.deepcopy(planted)
    with pytest.raises(CompressionError) as err:
        preflight(model, _recipe({"method": "expert_prune", **step}))
    assert err.value.code == "invalid_recipe"


def test_chain_before_quantization(planted: nn.Module, tmp_path: Path) -> None:
    """expert_prune then gptq: the quantizer sees (and compresses) only the kept experts."""
    from presso.load import load

    model = copy.deepcopy(planted)
    recipe = _recipe({"method": "expert_prune", "ratio": 0.5}, {"method": "gptq", "bits": 4, "group_size": 32})
    preflight(model, recipe)
    steps = compress(model, recipe, _ctx())["steps"]
    assert steps[1]["experts"]["experts"] == 2 * 4
    assert steps[1]["experts"]["expert_linears_compressed"] == 3 * 2 * 4
    with torch.no_grad():
        ref = model(IDS).logits
    write_model(model, None, tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "a")(IDS).logits, ref, rtol=0, atol=1e-5)


# -- REAP vs uniform random expert dropping ----------------------------------------------------------------

def _skewed(arch: str, spread: float = 3.0) -> nn.Module:
    """Skewed routing and contributions: router rows scaled 0.2..3, experts' outputs scaled 10^-spread..1."""
    model = _model(arch)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith(".experts") and hasattr(mod, "down_proj"):
                router = model.get_submodule(name.rpartition(".")[0]).gate
                n = router.weight.shape[0]
                router.weight.mul_(torch.linspace(0.2, 3.0, n)[torch.randperm(n, generator=gen)][:, None])
                mod.down_proj.mul_(torch.logspace(-spread, 0, n)[torch.randperm(n, generator=gen)][:, None, None])
    return model


@torch.no_grad()
def _rel_error(model: nn.Module, ref: torch.Tensor) -> float:
    out = model(HELD_OUT).logits
    return float((out - ref).norm() / ref.norm())


def compare(arch: str, ratio: float, seeds: int = 8, spread: float = 3.0) -> dict[str, float]:
    """Relative logits error on held-out tokens of REAP / frequency pruning and of uniform random dropping
    (mean over ``seeds``) at ``ratio`` of the experts."""
    base = _skewed(arch, spread)
    with torch.no_grad():
        ref = base(HELD_OUT).logits
    out: dict[str, float] = {}
    for criterion in ("reap", "frequency", "contribution"):
        model = copy.deepcopy(base)
        compress(model, _recipe({"method": "expert_prune", "ratio": ratio, "criterion": criterion}), _ctx())
        out[criterion] = _rel_error(model, ref)
    errors = []
    for seed in range(seeds):
        model = copy.deepcopy(base)
        rng = random.Random(seed)
        layers = moe_layers(model, "random")
        n = layers[0].experts.num_experts
        removed = round(ratio * n)
        for m in layers:
            keep_experts_(model, m, sorted(rng.sample(range(n), n - removed)))
        update_config_(model, n, n - removed)
        errors.append(_rel_error(model, ref))
    model = copy.deepcopy(base)
    compress(model, _recipe({"method": "expert_merge", "ratio": ratio}), _ctx())
    out["merge"] = _rel_error(model, ref)
    out["random_mean"] = sum(errors) / len(errors)
    out["random_best"] = min(errors)
    return out


@pytest.mark.parametrize("ratio", [0.25, 0.5])
@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
def test_reap_and_merge_beat_random_dropping(arch: str, ratio: float) -> None:
    got = compare(arch, ratio)
    assert got["reap"] <= got["random_mean"], got
    assert got["merge"] <= got["random_mean"], got


# -- `presso compress` on a saved tiny MoE model: expert_prune then rtn ---------------------------------------

def _save_with_tokenizer(model: nn.Module, dest: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())[:125]
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({"<s>": 125, "</s>": 126, "<unk>": 127})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def test_cli_chain_expert_prune_then_rtn(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from presso.cli import main
    from presso.load import load

    src = _save_with_tokenizer(_plant(_model("qwen3_moe")), tmp_path / "model")
    calib = tmp_path / "calib.txt"
    rng = random.Random(0)
    calib.write_text(" ".join(rng.choice(["alpha", "beta", "gamma", "delta", "moe", "expert"]) for _ in range(3000)))
    recipe = {"steps": [{"method": "expert_prune", "ratio": 0.25}, {"method": "rtn", "bits": 4, "group_size": 32}]}
    out = tmp_path / "out"
    code = main(["compress", str(src), "--recipe", json.dumps(recipe), "--calib", str(calib), "--samples", "8",
                 "--seq-len", "32", "--no-eval", "--device", "cpu", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    text = json.dumps(report)
    assert '"experts_after": 6' in text and '"method": "rtn"' in text
    config = json.loads((out / "config.json").read_text())
    assert 6 in {config.get("num_experts"), config.get("num_local_experts")}
    with torch.no_grad():
        by_presso = load(out)(IDS).logits
        by_transformers = AutoModelForCausalLM.from_pretrained(str(out)).eval()(IDS).logits
    torch.testing.assert_close(by_transformers, by_presso, rtol=0, atol=1e-5)
    assert sum(p.numel() for n, p in load(out).named_parameters() if ".experts" in n) > 0


# -- expert_merge --------------------------------------------------------------------------------------------

@torch.no_grad()
def _plant_merge(model: nn.Module) -> nn.Module:
    """Router rows 0..3 = u, -u, v, -v and row 4 = 0.01 u: expert 4 is (almost) never routed and its router
    logits are expert 0's times 0.01 (cosine 1), so merging one expert folds 4 into 0."""
    for name, mod in model.named_modules():
        if name.endswith(".experts") and hasattr(mod, "down_proj"):
            w = model.get_submodule(name.rpartition(".")[0]).gate.weight
            u, v = w[0].clone(), w[2].clone()
            w[1], w[3], w[NEVER] = -u, -v, 0.01 * u
    return model


def test_merge_registered() -> None:
    assert "expert_merge" in registered_methods()
    with pytest.raises(ValueError):
        CONFIGS["expert_merge"](ratio=0.25, similarity="weights")


def test_merge_folds_the_similar_rare_expert_into_its_twin(tmp_path: Path) -> None:
    model = _plant_merge(_model("qwen3_moe"))
    before = {m.name: [[lin.weight.clone() for lin in ex.linears()] for ex in m.experts]
              for m in moe_layers(model, "check")}
    report = compress(model, _recipe({"method": "expert_merge", "count": 1}), _ctx())["steps"][0]
    for layer, m in zip(report["moe_layers"], moe_layers(model, "check"), strict=True):
        assert layer["merged_into"] == {"0": [NEVER]}, layer
        t0, t4 = layer["tokens"][0], layer["tokens"][NEVER]
        assert t0 > 10 * max(t4, 1)
        old = before[m.name]
        for k, lin in enumerate(m.experts[0].linears()):
            expected = (t0 * old[0][k].double() + t4 * old[NEVER][k].double()) / (t0 + t4)
            torch.testing.assert_close(lin.weight.double(), expected, rtol=0, atol=1e-6)
        for new_e, old_e in enumerate([0, 1, 2, 3, 5, 6, 7]):
            if old_e:
                assert torch.equal(m.experts[new_e].linears()[2].weight, old[old_e][2])


@pytest.mark.parametrize(("arch", "ratio", "left"), [("mixtral", 0.25, 6), ("qwen3_moe", 0.5, 4)])
def test_merge_writes_a_smaller_checkpoint_that_loads(arch: str, ratio: float, left: int, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from presso.load import load

    model = _plant_merge(_model(arch))
    recipe = _recipe({"method": "expert_merge", "ratio": ratio})
    preflight(model, recipe)
    report = compress(model, recipe, _ctx())["steps"][0]
    assert report["experts_after"] == left
    assert all(sum(len(v) for v in layer["merged_into"].values()) == 8 - left for layer in report["moe_layers"])
    with torch.no_grad():
        ref = model(IDS).logits
    write_model(model, None, tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert left in {saved.get("num_experts"), saved.get("num_local_experts")}
    with torch.no_grad():
        for loaded in (load(tmp_path / "a"), AutoModelForCausalLM.from_pretrained(str(tmp_path / "a")).eval()):
            torch.testing.assert_close(loaded(IDS).logits, ref, rtol=0, atol=1e-5)


def test_merge_on_a_dense_model_is_unsupported() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    llama = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **BASE)).eval()
    with pytest.raises(CompressionError) as err:
        compress(llama, _recipe({"method": "expert_merge", "ratio": 0.5}), _ctx())
    assert err.value.code == "unsupported_model"


def test_merge_then_low_rank(tmp_path: Path) -> None:
    """expert_merge then svd (MC-SMoE's merge-then-compress): svd factors every kept expert's linears."""
    from presso.load import load

    model = _plant_merge(_model("mixtral"))
    recipe = _recipe({"method": "expert_merge", "ratio": 0.25}, {"method": "svd", "ratio": 0.3})
    preflight(model, recipe)
    steps = compress(model, recipe, _ctx())["steps"]
    assert steps[1]["experts"]["experts"] == 2 * 6
    assert steps[1]["experts"]["expert_linears_compressed"] == 3 * 2 * 6
    with torch.no_grad():
        ref = model(IDS).logits
    write_model(model, None, tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "a")(IDS).logits, ref, rtol=0, atol=1e-5)


# -- other MoE families ---------------------------------------------------------------------------------------

FAMILIES = {
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                      shared_expert_intermediate_size=64),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "deepseek_v3": dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, n_shared_experts=1,
                        first_k_dense_replace=0, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8,
                        qk_nope_head_dim=8, v_head_dim=16, n_group=1, topk_group=1),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=16, layer_types=["full_attention"] * 2),
}


@pytest.mark.parametrize("method", ["expert_prune", "expert_merge"])
@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_other_moe_families(arch: str, method: str, tmp_path: Path) -> None:
    """Shared experts are kept, DeepSeek-V3's score-correction bias follows the router rows; GPT-OSS's experts
    (transposed, interleaved, biased) are refused like every other method refuses them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from presso.load import load

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **{**BASE, **FAMILIES[arch]})).eval()
    recipe = _recipe({"method": method, "count": 1})
    if arch == "gpt_oss":
        with pytest.raises(CompressionError) as err:
            compress(model, recipe, _ctx())
        assert err.value.code == "unsupported_model"
        return
    report = compress(model, recipe, _ctx())["steps"][0]
    assert report["experts_after"] == 3
    with torch.no_grad():
        ref = model(IDS).logits
    write_model(model, None, tmp_path / "a")
    with torch.no_grad():
        for loaded in (load(tmp_path / "a"), AutoModelForCausalLM.from_pretrained(str(tmp_path / "a")).eval()):
            torch.testing.assert_close(loaded(IDS).logits, ref, rtol=0, atol=1e-5)


def test_group_limited_routing_is_unsupported() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    kw = {**BASE, **FAMILIES["deepseek_v3"], "n_group": 2, "topk_group": 1}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("deepseek_v3", **kw)).eval()
    with pytest.raises(CompressionError) as err:
        preflight(model, _recipe({"method": "expert_prune", "count": 1}))
    assert err.value.code == "unsupported_model" and "n_group" in str(err.value)


def test_merge_after_a_lossy_step_is_refused() -> None:
    """Averaging quantized (or pruned) experts leaves the grid (pattern): the artifact would differ from memory."""
    with pytest.raises(ValueError, match="before every lossy step"):
        _recipe({"method": "rtn", "bits": 4}, {"method": "expert_merge", "count": 1})
    _recipe({"method": "rtn", "bits": 4}, {"method": "expert_prune", "count": 1})  # dropping keeps the grid
