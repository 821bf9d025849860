"""run_local with an image+text calibration file (issue 20): GPTQ W4 on a tiny LLaVA whose processor makes the
rows; the images change the language model's Hessians, the artifact loads as image-text-to-text with its
processor, the vision tower is kept; a text-only model given images is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import png_data_uri as png_uri
from tiny_models import save_tiny_llava_with_processor, write_jsonl

from presso.compression.errors import CalibrationError
from presso.compression.io.imagecalib import image_text_windows, load_processor
from presso.compression.job import run_local
from presso.compression.recipe import parse_recipe
from presso.compression.spec import LocalJobSpec

pytest.importorskip("compressed_tensors")

GPTQ = {"steps": [{"method": "gptq", "bits": 4, "group_size": 16}]}
SEQ = 32


def _spec(model: Path, calib: Path, out: Path) -> LocalJobSpec:
    return LocalJobSpec(model_uri=str(model), out_dir=out, recipe=parse_recipe(GPTQ),
                        calibration={"uri": calib.as_uri(), "samples": 6, "seq_len": SEQ},
                        evaluation={"enabled": False})


def _block0_errors(out: Path) -> dict[str, float]:
    rows = json.loads((out / "report.json").read_text())["layers"]
    return {r["name"]: r["rel_error"] for r in rows if ".layers.0." in r["name"]}


def test_gptq_job_calibrates_on_images(tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = save_tiny_llava_with_processor(tmp_path / "model")
    lines = [{"text": f"picture {i}: a square of colour {i}", "image": png_uri(color=(40 * i, 100, 9))}
             for i in range(4)] + [{"text": "and two lines of plain text"}, {"text": "without a picture"}]
    calib = write_jsonl(tmp_path / "calib.jsonl", lines)
    res = run_local(_spec(tmp_path / "model", calib, tmp_path / "img"))
    assert res.metrics["calibration"] == {"samples": 6, "seq_len": SEQ, "samples_with_images": 4, "source": "file"}

    # the same token ids without the pixels: only the images differ, and the first block's Hessians with them
    ids, _ = image_text_windows(calib, load_processor(tmp_path / "model"), model.config, 6, SEQ, 320)
    np.save(tmp_path / "ids.npy", ids.numpy())
    text = run_local(_spec(tmp_path / "model", tmp_path / "ids.npy", tmp_path / "txt"))
    assert text.metrics["calibration"]["samples_with_images"] == 0
    a, b = _block0_errors(tmp_path / "img"), _block0_errors(tmp_path / "txt")
    assert len(a) == 7 and a.keys() == b.keys() and all(a[k] != b[k] for k in a)

    out = tmp_path / "img"
    loaded = AutoModelForImageTextToText.from_pretrained(str(out)).eval()
    processor = AutoProcessor.from_pretrained(str(out))
    tower = {k: v for k, v in model.state_dict().items() if "vision_tower" in k or "multi_modal_projector" in k}
    assert tower and all(torch.equal(loaded.state_dict()[k], v) for k, v in tower.items())
    from PIL import Image

    inputs = processor(images=[Image.new("RGB", (30, 30), (1, 2, 3))], text=["<image>\nwhat is it"],
                       return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(loaded(**inputs).logits).all()


def test_text_only_model_given_images_is_refused(tiny_llama_dir: Path, tmp_path: Path) -> None:
    calib = write_jsonl(tmp_path / "calib.jsonl", [{"text": "hello", "image": png_uri()}])
    with pytest.raises(CalibrationError, match="not a vision-language model"):
        run_local(_spec(tiny_llama_dir, calib, tmp_path / "out"))
