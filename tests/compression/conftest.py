"""Tiny random-weight models built from configs: fast, deterministic, no downloads."""

from __future__ import annotations

import pytest
import torch


def make_tiny_llama(hidden: int = 96, inter: int = 200, layers: int = 2, vocab: int = 300, tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, tie_word_embeddings=tie, max_position_embeddings=256,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def calib_ids():
    return torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def tiny_llama_factory():
    return make_tiny_llama
