"""presso.load: artifacts with factorized, quantized and EoRA layers reproduce the engine's model."""

import pytest
import torch

from compression.core.context import StepContext
from compression.io.artifact import write_model
from compression.pipeline import compress
from compression.recipe import parse_recipe
from presso.load import load


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=200, tie_word_embeddings=True, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


IDS = torch.randint(0, 200, (4, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("steps", [
    [{"method": "svd", "ratio": 0.3}],
    [{"method": "svd_llm", "ratio": 0.2, "rank_multiple": 16}, {"method": "rtn", "bits": 4, "group_size": 16}],
    [{"method": "rtn", "bits": 3, "group_size": 32}, {"method": "eora", "rank": 4}],
])
def test_load_reproduces_the_engine_logits(steps, tmp_path):
    model = tiny_llama()
    compress(model, parse_recipe({"steps": steps}), StepContext(calibration=IDS, batch_size=2))
    write_model(model, None, tmp_path)
    loaded = load(tmp_path)
    with torch.no_grad():
        assert torch.allclose(loaded(IDS).logits, model(IDS).logits, atol=1e-5)
    if steps[-1]["method"] == "eora":
        base = load(tmp_path, adapter=False)
        with torch.no_grad():
            assert not torch.allclose(base(IDS).logits, model(IDS).logits, atol=1e-3)


def test_load_refuses_a_mismatched_artifact(tmp_path):
    from compression.errors import ModelLoadError

    model = tiny_llama()
    compress(model, parse_recipe({"steps": [{"method": "svd", "ratio": 0.3}]}), StepContext())
    write_model(model, None, tmp_path)
    cfg = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(cfg.replace('"model.layers.0.mlp.up_proj"', '"model.layers.0.mlp.down_proj"'))
    with pytest.raises(ModelLoadError):
        load(tmp_path)


def test_load_sparse_bitmask_artifact(tmp_path):
    """A pruned model stored as sparse-bitmask comes back with identical logits through presso.load."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from compression.core.context import StepContext
    from compression.io.artifact import write_model
    from compression.pipeline import compress
    from compression.recipe import parse_recipe
    from presso.load import load

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128)).eval()
    compress(model, parse_recipe({"steps": [{"method": "magnitude", "sparsity": 0.6}]}), StepContext())
    write_model(model, None, tmp_path / "a")
    assert any(k.endswith(".weight.bitmask") for k in __import__("safetensors.torch", fromlist=["x"]).load_file(
        str(tmp_path / "a" / "model.safetensors")))
    ids = torch.randint(0, 128, (2, 12))
    assert torch.equal(load(tmp_path / "a")(ids).logits, model(ids).logits)
