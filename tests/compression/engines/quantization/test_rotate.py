"""rotate (issue 19): the rotations are orthogonal, the folded model computes the same logits before quantization
(norms absorbed, tied head untied), activation outliers stop hurting W4A4 / W8A8, unsupported architectures are
refused, and the artifact loads in transformers with Presso's logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from pydantic import ValidationError

from presso.compression.core.context import StepContext
from presso.compression.engines.quantization.rotate.rotate_math import hadamard, rotation
from presso.compression.errors import UnsupportedModel
from presso.compression.pipeline import compress, preflight
from presso.compression.recipe import methods_catalog, parse_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IDS = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))


def _llama(hidden: int = 128, outliers: bool = True):
    """Tiny Llama with non-trivial norm weights and two residual channels ~30x larger (LLMs' massive activations)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=128, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
        model.model.norm.weight.uniform_(0.5, 1.5)
        if outliers:
            model.model.embed_tokens.weight[:, [3, 17]] *= 30
    return model


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("d", [64, 96, 576, 128])
@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_rotations_are_orthogonal(d, kind):
    q = rotation(d, kind, seed=3)
    torch.testing.assert_close(q @ q.t(), torch.eye(d, dtype=torch.float64), rtol=0, atol=1e-12)
    assert not torch.equal(q, rotation(d, kind, seed=4))


def test_hadamard_entries_and_sizes():
    h = hadamard(8)
    torch.testing.assert_close(h.abs(), torch.full((8, 8), 8**-0.5, dtype=torch.float64), rtol=1e-15, atol=0)
    assert torch.equal(h[1, :4], torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64) * h[0, 0])
    q = rotation(128)  # a power of two: a pure randomized Hadamard, every entry +-1/sqrt(128)
    torch.testing.assert_close(q.abs(), torch.full((128, 128), 128**-0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="powers of two"):
        hadamard(12)


def test_catalog_and_recipe_rules():
    sq = {m["method"]: m for m in methods_catalog()}["rotate"]
    assert not sq["needs_calibration"] and not sq["lossy"]
    assert sq["schema"]["properties"]["rotation"]["enum"] == ["hadamard", "random"]
    with pytest.raises(ValidationError, match="must come before every lossy step"):
        parse_recipe({"steps": [{"method": "rtn"}, {"method": "rotate"}]})
    with pytest.raises(ValidationError, match="whole residual stream"):
        parse_recipe({"steps": [{"method": "rotate", "targets": ["*mlp*"]}]})
    assert not parse_recipe({"steps": [{"method": "rotate"}, {"method": "mxfp4", "scheme": "MXFP4"}]}) \
        .needs_calibration


@pytest.mark.parametrize(("hidden", "kind"), [(128, "hadamard"), (96, "hadamard"), (96, "random")])
def test_fold_is_function_preserving(hidden, kind):
    model = _llama(hidden)
    ref = _logits(model)
    emb_before = model.model.embed_tokens.weight.detach().clone()
    report = compress(model, parse_recipe({"steps": [{"method": "rotate", "rotation": kind}]}), StepContext())
    torch.testing.assert_close(_logits(model), ref, rtol=1e-4, atol=1e-4)
    step = report["steps"][0]
    assert step["untied_embeddings"] and not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert step["readers"] == {"input_layernorm": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                               "post_attention_layernorm": ["mlp.gate_proj", "mlp.up_proj"]}
    assert step["writers"] == ["self_attn.o_proj", "mlp.down_proj"] and step["final_norm"] == "model.norm"
    for norm in (model.model.norm, model.model.layers[1].input_layernorm):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    emb = model.model.embed_tokens.weight
    assert not torch.allclose(emb, emb_before)
    # the outlier channels are spread: the rotated residual's largest channel is far below the original's
    assert emb.abs().amax(0).max() < 0.5 * emb_before.abs().amax(0).max()


@pytest.mark.parametrize("steps", [[{"method": "int8"}], [{"method": "mxfp4", "scheme": "MXFP4"}]])
def test_quantization_error_drops(calib_ids, steps):
    """Measured here: INT8 W8A8 4.4e-6 -> 1.2e-6, MXFP4 W4A4 8.8e-4 -> 7.2e-4 (relative logit MSE)."""
    base = _llama()
    ref = _logits(base)
    plain, rotated = copy.deepcopy(base), copy.deepcopy(base)
    compress(plain, parse_recipe({"steps": steps}), StepContext(calibration=calib_ids))
    compress(rotated, parse_recipe({"steps": [{"method": "rotate"}, *steps]}), StepContext(calibration=calib_ids))

    def err(m):
        return float((_logits(m) - ref).pow(2).mean() / ref.pow(2).mean())

    assert err(rotated) < err(plain), (err(plain), err(rotated))


def test_layernorm_model_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=64)).eval()
    recipe = parse_recipe({"steps": [{"method": "rotate"}]})
    preflight(model, recipe)
    with pytest.raises(UnsupportedModel, match="rotate"):
        compress(model, recipe, StepContext())


def test_artifact_loads_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    from presso.compression.io.artifact import write_model
    from presso.load import load

    model = _llama()
    ref = _logits(model)
    compress(model, parse_recipe({"steps": [{"method": "rotate"}, {"method": "rtn", "bits": 8, "group_size": 32}]}),
             StepContext())
    write_model(model, None, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(theirs), _logits(model), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(load(tmp_path)), _logits(model), rtol=1e-5, atol=1e-5)
    assert float((_logits(model) - ref).pow(2).mean() / ref.pow(2).mean()) < 1e-3
