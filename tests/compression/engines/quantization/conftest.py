"""Tiny random-weight models of several architectures, built from configs (no downloads)."""

from __future__ import annotations

import pytest
import torch

VOCAB = 300


def _llama(kv_heads: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    # hidden 96: a requested group of 64 does not divide it -> resolved to 48
    cfg = LlamaConfig(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, vocab_size=VOCAB, max_position_embeddings=128,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128)
    return Qwen2ForCausalLM(cfg)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=128))


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
                    max_position_embeddings=128, word_embed_proj_dim=64)
    return OPTForCausalLM(cfg)


def _bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=VOCAB, max_position_embeddings=128)
    return BertModel(cfg)


BUILDERS = {"llama": _llama, "llama_gqa": lambda: _llama(2), "qwen2": _qwen2, "gpt2": _gpt2, "opt": _opt,
            "bert": _bert}


def build(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return BUILDERS[arch]().eval()


@pytest.fixture
def calib() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def make_model():
    return build
