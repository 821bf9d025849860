"""Tiny random checkpoints of the architectures the tests claim, saved as transformers saves them."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_mixtral(dest: Path) -> Path:
    """A 2-layer Mixtral (4 experts, top-2): per-expert tensors on disk, fused experts in memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("mixtral", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                               num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(dest)  # block_sparse_moe.experts.N.w1...
    return dest


def save_tiny_llava(dest: Path) -> torch.nn.Module:
    """A 2-layer LLaVA with a 1-layer CLIP tower and a processor file; returns the model it saved."""
    from transformers import AutoConfig, AutoModelForImageTextToText, SiglipImageProcessor

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "llava", text_config={"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "vocab_size": 320, "max_position_embeddings": 64},
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        image_token_index=310)
    model = AutoModelForImageTextToText.from_config(cfg).eval()
    model.save_pretrained(dest)
    SiglipImageProcessor(size={"height": 28, "width": 28}).save_pretrained(str(dest))
    return model
