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


def save_tiny_llava_with_processor(dest: Path) -> torch.nn.Module:
    """``save_tiny_llava`` plus a full ``LlavaProcessor``: a byte-level tokenizer whose ``<image>`` is the model's
    image token (310) and a CLIP image processor (28x28, 4 image tokens a picture). No hub access."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    model = save_tiny_llava(dest)
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({"<s>": 256, "</s>": 257, "<unk>": 258, "<image>": 310})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                   image_token="<image>", num_additional_image_tokens=1).save_pretrained(dest)
    return model


def png_data_uri(w: int = 40, h: int = 30, color: tuple[int, int, int] = (200, 30, 10)) -> str:
    """A plain-colour PNG as the data URI an image+text calibration line carries."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    import json

    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path
