import pytest
import torch
from torch import nn

from presso.compression.core.layout import find_layout, get_weight, select_linears, set_weight_
from presso.compression.errors import NoTargetModules, UnsupportedModel


def test_finds_llama_blocks(tiny_llama):
    layout = find_layout(tiny_llama)
    assert layout.prefix == "model.layers" and len(layout.blocks) == 2
    chosen = select_linears(tiny_llama, layout, ["*"], ["lm_head"])
    assert sorted(n.rsplit(".", 1)[-1] for n in chosen[0]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def test_no_match_is_an_error(tiny_llama):
    with pytest.raises(NoTargetModules):
        select_linears(tiny_llama, find_layout(tiny_llama), ["does_not_exist"], [])


def test_unsupported_model():
    with pytest.raises(UnsupportedModel):
        find_layout(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


def test_gpt2_conv1d_weights_are_out_in():
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64))
    layout = find_layout(m)
    assert layout.prefix == "transformer.h"
    c_fc = m.transformer.h[0].mlp.c_fc  # Conv1D: weight stored [in, out]
    w = get_weight(c_fc)
    assert w.shape == (128, 32)
    set_weight_(c_fc, torch.zeros_like(w))
    assert c_fc.weight.abs().sum() == 0
