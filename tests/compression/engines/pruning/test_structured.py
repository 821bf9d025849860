import pytest
import torch

from presso.compression.configs.pruning import PruneStructuredConfig
from presso.compression.core.context import StepContext
from presso.compression.engines.pruning.structured import structured_math as sm
from presso.compression.errors import InvalidRecipe
from presso.compression.io.artifact import write_model
from presso.compression.registry import engine_for


def _run(model, cfg, calib):
    return engine_for(cfg).apply_(model, cfg, StepContext(calibration=calib, batch_size=4))


@pytest.mark.parametrize("cfg", [
    PruneStructuredConfig(ratio=0.3),
    PruneStructuredConfig(mlp_ratio=0.25, head_ratio=0.5, drop_blocks=1),
], ids=["ratio", "components+drop"])
def test_structured_model_loads_with_the_reported_parameter_count(tiny_llama_factory, calib_ids, tmp_path, cfg):
    from transformers import AutoModelForCausalLM

    model = tiny_llama_factory(layers=3)  # GQA: 4 heads, 2 KV heads, head_dim 24
    rep = _run(model, cfg, calib_ids)
    assert rep["params_after"] == sum(p.numel() for p in model.parameters()) < rep["params_before"]
    if cfg.ratio:
        assert abs(rep["block_fraction_removed"] - cfg.ratio) < 0.02
    else:
        assert rep["num_key_value_heads"] == 1 and rep["num_attention_heads"] == 2
        assert rep["intermediate_size"] == 150 and len(rep["dropped_blocks"]) == 1
    write_model(model, None, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert sum(p.numel() for p in loaded.parameters()) == rep["params_after"]
    assert loaded.config.head_dim == 24
    x = calib_ids[:2]
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)


def test_impossible_targets_fail_before_work(tiny_llama, calib_ids):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    for cfg, match in [
        (PruneStructuredConfig(head_ratio=0.9), "every attention head"),
        (PruneStructuredConfig(mlp_ratio=0.999), "every channel"),
        (PruneStructuredConfig(ratio=None, drop_blocks=2), "all 2 blocks"),
    ]:
        with pytest.raises(InvalidRecipe, match=match):
            _run(tiny_llama, cfg, calib_ids)
    after = tiny_llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_least_squares_refit_beats_plain_slicing():
    torch.manual_seed(0)
    x = torch.randn(4000, 64) @ (torch.eye(64) + 0.3 * torch.randn(64, 64))
    w = torch.randn(32, 64)
    gram = x.t() @ x
    keep = sm.keep_units(sm.unit_importance(w, gram, 4), 6)  # 16 units of 4 columns, drop 6
    cols = sm.unit_columns(keep, 4)
    assert cols.numel() == 40
    ref = x @ w.t()
    sliced = x[:, cols] @ w[:, cols].t()
    refit = x[:, cols] @ sm.refit_output(w, gram, cols, damp=1e-6).t()
    assert (refit - ref).norm() < 0.9 * (sliced - ref).norm()
