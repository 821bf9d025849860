import json

import pytest
import torch
from safetensors.torch import load_file

from presso.compression.configs.pruning import SparseGPTConfig, WandaConfig
from presso.compression.core.context import StepContext
from presso.compression.io.artifact import write_model
from presso.compression.io.formats.base import WriteOptions
from presso.compression.io.formats.sparse import SparseBitmask, decode, decompress_state_, encode
from presso.compression.registry import engine_for


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bitmask_round_trip_is_bit_exact(dtype):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(33, 70, generator=g).to(dtype)
    t[torch.rand(33, 70, generator=g) < 0.6] = 0.0
    t[0, :3] = torch.tensor([-0.0, float("nan"), float("inf")], dtype=dtype)
    t[5] = 0.0  # an empty row
    parts = encode(t)
    assert parts["bitmask"].dtype == torch.uint8 and parts["bitmask"].shape == (33, 9)
    back = decode(parts)
    assert back.dtype == dtype and torch.equal(back.view(torch.uint8), t.view(torch.uint8))


@pytest.mark.parametrize("cols", [64, 61, 8, 3])
def test_torch_packbits_matches_numpy(cols):
    """The torch packer (what a mask on a GPU takes) computes numpy.packbits' bytes."""
    import numpy as np

    from presso.compression.io.formats import sparse

    mask = torch.rand(17, cols, generator=torch.Generator().manual_seed(cols)) < 0.4
    want = torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))
    assert torch.equal(sparse.packbits(mask), want)
    assert torch.equal(sparse.packbits_torch(mask), want)


def test_two_four_detection():
    from presso.compression.io.formats.sparse import is_two_four

    mask = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    assert is_two_four(mask)
    assert not is_two_four(torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool))
    assert not is_two_four(torch.zeros(2, 6, dtype=torch.bool))  # width not a multiple of 4


def test_layout_matches_compressed_tensors_bitmask():
    from compressed_tensors.utils import pack_bitmasks, unpack_bitmasks

    t = torch.randn(8, 21)
    t[t.abs() < 0.7] = 0
    parts = encode(t)
    assert torch.equal(parts["bitmask"], pack_bitmasks(t != 0))
    assert torch.equal(unpack_bitmasks(parts["bitmask"], [8, 21]), t != 0)
    counts = (t != 0).sum(1)
    assert torch.equal(parts["row_offsets"], torch.cumsum(counts, 0) - counts)


def _pruned(tiny_llama, calib_ids, cfg):
    engine_for(cfg).apply_(tiny_llama, cfg, StepContext(calibration=calib_ids, batch_size=4))
    return tiny_llama


def test_sparse_artifact_is_smaller_and_restores_bit_exact(tiny_llama, calib_ids, tmp_path):
    model = _pruned(tiny_llama, calib_ids, WandaConfig(pattern="2:4"))
    write_model(model, None, tmp_path / "sparse", sparse_format="sparse-bitmask")
    write_model(model, None, tmp_path / "dense", fmt="dense")
    sparse_size = (tmp_path / "sparse" / "model.safetensors").stat().st_size
    dense_size = (tmp_path / "dense" / "model.safetensors").stat().st_size
    # 2:4 of fp32: half the values, plus 1/32 for the bitmask and 8 bytes per row
    assert sparse_size < dense_size - 0.43 * 4 * sum(p.numel() for n, p in model.named_parameters() if "proj" in n)
    qc = json.loads((tmp_path / "sparse" / "config.json").read_text())["quantization_config"]
    assert "quant_method" not in qc and qc["presso_format"] == ["sparse-bitmask"]  # transformers refuses it
    cfg = qc["compressed_tensors"]["sparsity_config"]
    assert cfg["format"] == "sparse-bitmask" and cfg["sparsity_structure"] == "2:4"
    state = load_file(tmp_path / "sparse" / "model.safetensors")
    assert len(decompress_state_(state)) == 14
    ref = load_file(tmp_path / "dense" / "model.safetensors")
    assert state.keys() == ref.keys()
    assert all(torch.equal(state[k], ref[k]) for k in ref)


def test_layers_below_break_even_stay_dense(tiny_llama):
    w = tiny_llama.model.layers[0].mlp.down_proj.weight.data
    w[:, :4] = 0  # 2% zeros: dense is smaller
    tiny_llama.model.layers[1].mlp.down_proj.weight.data[:, :100] = 0  # 50%: sparse
    state = {k: v.contiguous() for k, v in tiny_llama.state_dict().items()}
    config: dict = {}
    assert SparseBitmask().export(tiny_llama, state, config, WriteOptions(sparse_format="sparse-bitmask"))
    assert "model.layers.0.mlp.down_proj.weight" in state
    assert "model.layers.1.mlp.down_proj.weight.compressed" in state
    assert config["quantization_config"]["sparsity_config"]["sparsity_structure"] == "unstructured"


def test_sparse_layers_are_dense_by_default(tiny_llama, calib_ids, tmp_path):
    model = _pruned(tiny_llama, calib_ids, WandaConfig(sparsity=0.5))
    assert write_model(model, None, tmp_path) == ["dense"]
    state = load_file(tmp_path / "model.safetensors")
    assert not any(k.endswith(".bitmask") for k in state)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())


def test_sparse_and_quantized_layers_are_stored_packed(tiny_llama, calib_ids, tmp_path):
    model = _pruned(tiny_llama, calib_ids, SparseGPTConfig(sparsity=0.5, bits=4, group_size=32, block_size=32))
    write_model(model, None, tmp_path, sparse_format="sparse-bitmask")  # quantized layers stay packed anyway
    state = load_file(tmp_path / "model.safetensors")
    assert not any(k.endswith(".compressed") for k in state)
    assert sum(k.endswith(".weight_packed") for k in state) == 14
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized" and "sparsity_config" not in qc
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    x = calib_ids[:2]
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-5)
