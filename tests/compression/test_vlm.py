"""Vision-language models (issue 20): the language model is compressed by default, the vision tower and
projector are kept bit for bit, the processor files travel with the artifact, and the artifact loads with
``presso.load`` and ``AutoModelForImageTextToText`` giving the in-memory compressed model's logits.

Tiny random Qwen2-VL, LLaVA (CLIP + Llama) and Gemma 3 models; calibration on text.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from presso.compression.core.context import StepContext
from presso.compression.io.artifact import write_model
from presso.compression.io.formats import artifact_loaders
from presso.compression.pipeline import compress
from presso.compression.recipe import parse_recipe

pytest.importorskip("compressed_tensors")

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
CALIB = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(4))
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=160, max_position_embeddings=64)
VLMS: dict[str, dict[str, Any]] = {
    "qwen2_vl": dict(
        text_config={**TEXT, "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]}},
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2),
        image_token_id=150, video_token_id=151, vision_start_token_id=152),
    "llava": dict(
        text_config={"model_type": "llama", **TEXT},
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14),
        image_token_index=150),
    "gemma3": dict(
        text_config={**TEXT, "head_dim": 16, "sliding_window": 16},
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=150, boi_token_index=151, eoi_token_index=152),
}
LM_LINEARS = 2 * 7  # two decoder layers of q/k/v/o + gate/up/down


def _vlm(arch: str) -> nn.Module:
    from transformers import AutoConfig, AutoModelForImageTextToText

    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(AutoConfig.for_model(arch, **VLMS[arch])).eval()


@pytest.mark.parametrize("arch", list(VLMS))
def test_language_model_only_and_loads_as_image_text_to_text(arch: str, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, SiglipImageProcessor

    model = _vlm(arch)
    before = {k: v.clone() for k, v in model.state_dict().items() if "language_model" not in k and "lm_head" not in k}
    step = compress(model, parse_recipe({"steps": [{"method": "gptq", "bits": 4, "group_size": 16}]}),
                    StepContext(calibration=CALIB, batch_size=4))["steps"][0]
    names = [r["name"] for r in step["layers"] if "rel_error" in r]
    assert len(names) == LM_LINEARS and all(n.startswith("model.language_model.layers.") for n in names)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # vision tower, projector, embeddings kept
    with torch.no_grad():
        ref = model(input_ids=IDS).logits

    src = tmp_path / "source"
    SiglipImageProcessor(size={"height": 28, "width": 28}).save_pretrained(str(src))  # a processor file to keep
    out = tmp_path / "artifact"
    write_model(model, None, out, source_dir=src)
    assert (out / "preprocessor_config.json").read_bytes() == (src / "preprocessor_config.json").read_bytes()
    assert {"presso.load", "transformers"} <= set(artifact_loaders(out)["loaders"])

    from presso.load import load

    loaded = load(out)
    assert type(loaded).__name__ == type(model).__name__
    hf = AutoModelForImageTextToText.from_pretrained(str(out)).eval()
    with torch.no_grad():
        for got in (loaded(input_ids=IDS).logits, hf(input_ids=IDS).logits):
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_vision_tower_is_kept_even_when_it_is_the_larger_block_list() -> None:
    from transformers import AutoConfig, AutoModelForImageTextToText

    vision = dict(model_type="clip_vision_model", hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=2, image_size=28, patch_size=14)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(
        AutoConfig.for_model("llava", **{**VLMS["llava"], "vision_config": vision})).eval()
    tower = model.model.vision_tower
    lm = model.model.language_model
    assert sum(p.numel() for p in tower.parameters()) > sum(p.numel() for p in lm.parameters())
    kept = copy.deepcopy(tower.state_dict())
    step = compress(model, parse_recipe({"steps": [{"method": "rtn", "bits": 4, "group_size": 16}]}),
                    StepContext())["steps"][0]
    assert len(step["layers"]) == LM_LINEARS
    assert all(torch.equal(tower.state_dict()[k], v) for k, v in kept.items())
