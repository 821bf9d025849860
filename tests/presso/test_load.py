"""presso.load: artifacts with factorized, quantized and EoRA layers reproduce the engine's model."""

import pytest
import torch

from presso.compression.core.context import StepContext
from presso.compression.io.artifact import write_model
from presso.compression.pipeline import compress
from presso.compression.recipe import parse_recipe
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
    from presso.compression.errors import ModelLoadError

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

    from presso.compression.core.context import StepContext
    from presso.compression.io.artifact import write_model
    from presso.compression.pipeline import compress
    from presso.compression.recipe import parse_recipe
    from presso.load import load

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128)).eval()
    compress(model, parse_recipe({"steps": [{"method": "magnitude", "sparsity": 0.6}]}), StepContext())
    write_model(model, None, tmp_path / "a", sparse_format="sparse-bitmask")
    assert any(k.endswith(".weight.bitmask") for k in __import__("safetensors.torch", fromlist=["x"]).load_file(
        str(tmp_path / "a" / "model.safetensors")))
    ids = torch.randint(0, 128, (2, 12))
    assert torch.equal(load(tmp_path / "a")(ids).logits, model(ids).logits)


@pytest.mark.parametrize("steps", [
    [{"method": "rtn", "bits": 4, "group_size": 16}],
    [{"method": "rtn", "bits": 4, "group_size": 32, "symmetric": False}],
    [{"method": "rtn", "bits": 8, "group_size": -1}],
    [{"method": "gptq", "bits": 3, "group_size": 32}, {"method": "eora", "rank": 4}],
    [{"method": "svd_llm", "ratio": 0.2, "rank_multiple": 16}, {"method": "rtn", "bits": 4, "group_size": 16}],
])
def test_packed_load_keeps_codes_and_matches_the_dense_load(steps, tmp_path):
    from safetensors.torch import load_file

    from presso.compression.io.packed_linear import PackedLinear

    model = tiny_llama()
    compress(model, parse_recipe({"steps": steps}), StepContext(calibration=IDS, batch_size=2))
    write_model(model, None, tmp_path)
    dense, packed = load(tmp_path), load(tmp_path, packed=True)
    layers = [m for m in packed.modules() if isinstance(m, PackedLinear)]
    stored = [k for k in load_file(str(tmp_path / "model.safetensors")) if k.endswith(".weight_packed")]
    assert len(layers) == len(stored) >= 14  # every quantized linear (factors count twice)
    assert all(m.weight_packed.dtype == torch.int32 for m in layers)
    if steps[-1]["method"] == "eora":
        assert all(m.lora_A is not None for m in layers)
    bytes_dense = sum(t.numel() * t.element_size() for n, t in dense.state_dict().items() if ".layers." in n)
    bytes_packed = sum(t.numel() * t.element_size() for n, t in packed.state_dict().items() if ".layers." in n)
    assert bytes_packed < bytes_dense / 2
    with torch.no_grad():
        want = model(IDS).logits
        assert torch.allclose(packed(IDS).logits, want, atol=1e-4)
        assert torch.allclose(dense(IDS).logits, want, atol=1e-5)


def test_ragged_groups_of_other_writers_dequantize_with_the_written_group():
    """K = 40, groups of 16: 3 groups, the last one short, as llm-compressor writes for widths that do not
    divide (Presso itself picks a dividing group). K / 3 would give the wrong size."""
    from presso.compression.io.formats.quantized import dequantize_packed_
    from presso.compression.io.packed_linear import PackedLinear
    from presso.kernels.w4a16 import reference as ref

    gen = torch.Generator().manual_seed(5)
    q = torch.randint(-8, 8, (6, 40), generator=gen, dtype=torch.int8)
    scale = torch.rand(6, 3, generator=gen)
    packed = ref.pack_int(q, 4)
    qcfg = {"format": "pack-quantized", "config_groups": {"group_0": {
        "targets": ["Linear"], "weights": {"num_bits": 4, "strategy": "group", "group_size": 16}}}}
    state = {"l.weight_packed": packed, "l.weight_scale": scale, "l.weight_shape": torch.tensor([6, 40])}
    dequantize_packed_(state, qcfg, torch.float32)
    want = ref.dequantize(packed, scale, None, 4, 16, 40, dtype=torch.float32)
    assert torch.equal(state["l.weight"], want)
    x = torch.randn(3, 40, generator=gen)
    layer = PackedLinear(40, 6, 4, 16, packed, scale)
    assert torch.allclose(layer(x), x @ want.t(), atol=1e-5)


def test_other_quantization_formats_go_to_transformers(tmp_path, monkeypatch):
    """A compressed-tensors checkpoint in a format Presso does not write (here FP8 'float-quantized') is not
    read by the pack-quantized form: presso.load hands it to transformers' own from_pretrained."""
    import json

    from presso.compression.io import loading

    model = tiny_llama()
    write_model(model, None, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "format": "float-quantized",
                                  "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8}}}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    seen = []
    monkeypatch.setattr(loading, "load_model", lambda path, dtype=None: seen.append(path) or
                        loading.LoadedModel(model=model, tokenizer=None, kind="causal_lm", source_format="x"))
    assert load(tmp_path) is model and seen == [tmp_path]
