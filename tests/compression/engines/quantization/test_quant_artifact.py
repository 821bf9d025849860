"""A quantized artifact loads in transformers (compressed-tensors pack-quantized) with the engine's logits."""

from __future__ import annotations

import json

import pytest
import torch

from presso.compression.configs.quantization import GPTQConfig, HQQConfig, QuantOverride
from presso.compression.core.context import StepContext
from presso.compression.io.artifact import write_model
from presso.compression.registry import engine_for

pytest.importorskip("compressed_tensors")


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def test_gptq_artifact_loads_with_matching_logits(tmp_path, make_model, calib):
    model = make_model("llama")
    cfg = GPTQConfig(bits=4, group_size=64, act_order=True, overrides=[QuantOverride(pattern="down_proj", bits=8)])
    engine_for(cfg).apply_(model, cfg, StepContext(calibration=calib, batch_size=4))
    write_model(model, None, tmp_path)
    qcfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "pack-quantized"
    groups = {(g["weights"]["num_bits"], g["weights"]["group_size"]) for g in qcfg["config_groups"].values()}
    assert groups == {(4, 48), (8, 64)}
    loaded = _load(tmp_path)
    with torch.no_grad():
        ours, theirs = model(calib).logits, loaded(calib).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_asymmetric_artifact_is_standard(tmp_path, make_model):
    """HQQ (asymmetric, integer zero points): zero points packed along rows exactly as compressed-tensors'
    own compressor writes them, and the artifact loads in plain transformers with exact logits (config.json's
    `dequantize` sidesteps compressed-tensors 0.20.1's unpacked meta zero point; formats/quantized.py)."""
    model = make_model("llama")
    cfg = HQQConfig(bits=4, group_size=32, iters=5)
    engine_for(cfg).apply_(model, cfg, StepContext())
    write_model(model, None, tmp_path)
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from safetensors.torch import load_file

    from presso.compression.core.layout import quantized_of

    state = load_file(str(tmp_path / "model.safetensors"))
    zp = state["model.layers.0.mlp.up_proj.weight_zero_point"]
    qw = quantized_of(model.model.layers[0].mlp.up_proj)
    assert zp.dtype == torch.int32 and torch.equal(zp, pack_to_int32(qw.zero, 4, packed_dim=0))
    loaded = _load(tmp_path)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
