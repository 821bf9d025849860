"""Low-rank artifacts: factors on disk, the dense export, and EoRA residuals as a PEFT adapter."""

import json

import pytest
import torch
from safetensors import safe_open

from presso.compression.core.context import StepContext
from presso.compression.io.artifact import write_model
from presso.compression.pipeline import compress
from presso.compression.recipe import parse_recipe


def compressed(model, steps, calib):
    compress(model, parse_recipe({"steps": steps}), StepContext(calibration=calib, batch_size=4))
    return model


def keys_and_bytes(d):
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()}


def test_factors_are_stored_so_the_artifact_shrinks_and_dense_loads_in_transformers(tiny_llama, calib_ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model = compressed(tiny_llama, [{"method": "svd", "ratio": 0.2}], calib_ids)
    write_model(model, None, tmp_path / "c")
    write_model(model, None, tmp_path / "d", "dense")
    c, d = keys_and_bytes(tmp_path / "c"), keys_and_bytes(tmp_path / "d")
    name = "model.layers.0.mlp.down_proj"
    assert f"{name}.A.weight" in c and f"{name}.weight" not in c and f"{name}.weight" in d
    lin_c = sum(v for k, v in c.items() if k.endswith((".A.weight", ".B.weight")))
    lin_d = sum(v for k, v in d.items() if k.startswith("model.layers") and k.endswith("proj.weight"))
    assert 0.78 < lin_c / lin_d <= 0.8
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["presso_lowrank"]["factorized"][name]["rank"] == model.get_submodule(name).rank
    dense = AutoModelForCausalLM.from_pretrained(str(tmp_path / "d")).eval()
    with torch.no_grad():
        assert torch.allclose(dense(calib_ids[:2]).logits, model(calib_ids[:2]).logits, atol=1e-4)


@pytest.fixture
def eora_artifact(tiny_llama, calib_ids, tmp_path):
    # group 8 divides every input width (96, 200): one quantization scheme for all layers
    model = compressed(tiny_llama, [{"method": "rtn", "bits": 3, "group_size": 8}, {"method": "eora", "rank": 8}],
                       calib_ids)
    write_model(model, None, tmp_path)
    return model, tmp_path


def test_eora_residual_is_a_peft_adapter_on_the_packed_base(eora_artifact, calib_ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, d = eora_artifact
    keys = keys_and_bytes(d)
    assert "model.layers.0.self_attn.q_proj.weight_packed" in keys and not any("lora" in k for k in keys)
    cfg = json.loads((d / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == cfg["lora_alpha"] == 8 and len(cfg["target_modules"]) == 14
    # the README's path as written: config.json's `dequantize` makes transformers decompress the packed base
    # on load, so PEFT finds plain Linear layers with a weight
    base = AutoModelForCausalLM.from_pretrained(str(d)).eval()
    peft_model = PeftModel.from_pretrained(base, str(d / "adapter")).eval()
    with torch.no_grad():
        want = model(calib_ids[:2]).logits
        assert torch.allclose(peft_model(calib_ids[:2]).logits, want, atol=1e-4)


def test_dense_export_merges_the_residual(eora_artifact, calib_ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = eora_artifact
    write_model(model, None, tmp_path / "dense", "dense")
    assert not (tmp_path / "dense" / "adapter").exists()
    dense = AutoModelForCausalLM.from_pretrained(str(tmp_path / "dense")).eval()
    with torch.no_grad():
        assert torch.allclose(dense(calib_ids[:2]).logits, model(calib_ids[:2]).logits, atol=1e-4)
