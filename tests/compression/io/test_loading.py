import json

import pytest
import torch
from safetensors.torch import save_file

from presso.compression.errors import ModelLoadError, ModelTooLarge, UnsafeModel
from presso.compression.io.loading import declared_params, load_model


@pytest.fixture
def model_dir(tmp_path, tiny_llama):
    d = tmp_path / "m"
    tiny_llama.save_pretrained(d)
    return d


def test_loads_safetensors_dir(model_dir, tiny_llama):
    lm = load_model(model_dir)
    assert lm.kind == "causal_lm" and lm.source_format == "safetensors"
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(lm.model(ids).logits, tiny_llama(ids).logits, atol=1e-5)


def test_pickle_only_is_refused(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UnsafeModel, match="pickle"):
        load_model(d)
    with pytest.raises(UnsafeModel):
        load_model(d / "pytorch_model.bin")


def test_pickle_beside_safetensors_is_never_read(model_dir, tiny_llama):
    (model_dir / "pytorch_model.bin").write_bytes(b"garbage that would crash torch.load")
    assert load_model(model_dir).model is not None


def test_auto_map_is_stripped(model_dir):
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    lm = load_model(model_dir)
    assert "removed config key 'auto_map'" in lm.notes
    assert "auto_map" not in json.loads((model_dir / "config.json").read_text())


def test_truncated_safetensors(model_dir):
    f = model_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ModelLoadError):
        load_model(model_dir)


def test_param_cap_reads_only_the_header(tmp_path):
    d = tmp_path / "big"
    d.mkdir()
    save_file({"w": torch.zeros(10, 10)}, str(d / "model.safetensors"))
    (d / "config.json").write_text("{}")
    assert declared_params(d) == 100
    with pytest.raises(ModelTooLarge):
        load_model(d, max_params=99)


def test_missing_weights(tmp_path):
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        load_model(tmp_path)
