"""Image+text calibration files (issue 20): the JSONL format, its caps, the rows the processor makes, and proof
that the images reach the language model's first block."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import torch
from tiny_models import png_data_uri as png_uri
from tiny_models import save_tiny_llava_with_processor, write_jsonl

from presso.compression.core.context import StepContext
from presso.compression.core.layout import find_layout
from presso.compression.core.sequential import capture_inputs
from presso.compression.errors import CalibrationError
from presso.compression.io import imagefile
from presso.compression.io.imagecalib import image_text_windows, load_processor
from presso.compression.io.imagefile import has_images, read_samples

IMAGE_ID = 310


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("llava")
    model = save_tiny_llava_with_processor(d)
    return d, model, load_processor(d)


def test_rows_have_image_tokens_pixels_and_exact_length(llava, tmp_path: Path) -> None:
    d, model, proc = llava
    f = write_jsonl(tmp_path / "c.jsonl", [{"text": "a red square " * 10, "image": png_uri()},
                                          {"text": "hi", "image": png_uri(color=(0, 0, 255))},
                                          {"text": "only text here"}])
    assert has_images(f)
    ids, extras = image_text_windows(f, proc, model.config, samples=8, seq_len=24, vocab_size=320)
    assert ids.shape == (3, 24) and extras.with_images == 2
    assert [int((r == IMAGE_ID).sum()) for r in ids] == [4, 4, 0]  # 28x28 / 14x14 patches, never cut
    assert extras.rows[0]["pixel_values"].shape == (1, 3, 28, 28) and extras.rows[2] == {}
    # a short sample is padded with the file's text stream (its first tokens: "a red square ...")
    stream = proc.tokenizer("a red square", add_special_tokens=False)["input_ids"]
    row1 = ids[1].tolist()
    assert any(row1[i:i + len(stream)] == stream for i in range(5, len(row1)))


def test_image_tokens_are_never_cut(llava, tmp_path: Path) -> None:
    d, model, proc = llava
    f = write_jsonl(tmp_path / "c.jsonl", [{"text": "x", "image": png_uri()}])
    with pytest.raises(CalibrationError, match="position 4.*seq_len 3"):  # 4 image tokens
        image_text_windows(f, proc, model.config, samples=1, seq_len=3, vocab_size=320)


def test_images_reach_the_first_block(llava, tmp_path: Path) -> None:
    """Same token ids, with and without the pixels: block 0's inputs differ exactly at the image tokens."""
    d, model, proc = llava
    f = write_jsonl(tmp_path / "c.jsonl", [{"text": f"sample {i}", "image": png_uri(color=(40 * i, 9, 9))}
                                          for i in range(4)])
    ids, extras = image_text_windows(f, proc, model.config, samples=4, seq_len=16, vocab_size=320)
    layout = find_layout(model)
    with_images = capture_inputs(model, layout, StepContext(calibration=ids, calibration_extras=extras, batch_size=2))
    text_only = capture_inputs(model, layout, StepContext(calibration=ids, batch_size=2))
    a, b = torch.cat(with_images.hidden), torch.cat(text_only.hidden)
    image_pos = ids == IMAGE_ID
    assert not torch.allclose(a[image_pos], b[image_pos])
    torch.testing.assert_close(a[~image_pos], b[~image_pos], rtol=0, atol=0)
    # a prefix of the rows (svd_llm's subset) keeps its images; other ids (a random probe) get none
    assert StepContext(calibration=ids[:2], calibration_extras=extras).batch_extras(0, torch.float32)
    assert not StepContext(calibration=ids.clone(), calibration_extras=extras).batch_extras(0, torch.float32)


@pytest.mark.parametrize("line,match", [
    ({"text": "x", "image": "data:text/plain;base64,aGVsbG8="}, "data URI of an image"),
    ({"text": "x", "image": "https://example.com/a.png"}, "data URI of an image"),
    ({"text": "x", "image": "data:image/png;base64,not base64!"}, "base64 is invalid"),
    ({"text": "x", "image": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}, "not a readable"),
    ({"text": "x", "image": 3}, "data URI string"),
    ({"text": "x", "img": "y"}, "unknown fields"),
])
def test_bad_lines_are_refused(llava, tmp_path: Path, line: dict, match: str) -> None:
    d, model, proc = llava
    f = write_jsonl(tmp_path / "c.jsonl", [line])
    with pytest.raises(CalibrationError, match=match) as info:
        image_text_windows(f, proc, model.config, samples=1, seq_len=16, vocab_size=320)
    assert info.value.code == "calibration_error" and "c.jsonl:1" in info.value.message


def test_caps(tmp_path: Path) -> None:
    tiny = png_uri(1, 1)
    f = write_jsonl(tmp_path / "many.jsonl", [{"text": "x", "image": tiny}] * (imagefile.MAX_IMAGES + 1))
    with pytest.raises(CalibrationError, match=f"more than {imagefile.MAX_IMAGES} images"):
        read_samples(f, limit=4)  # the whole file counts, not only the samples used
    big = "data:image/png;base64," + base64.b64encode(b"\0" * (imagefile.MAX_IMAGE_BYTES + 16)).decode()
    f = write_jsonl(tmp_path / "big.jsonl", [{"text": "x", "image": big}])
    with pytest.raises(CalibrationError, match=f"over {imagefile.MAX_IMAGE_BYTES} bytes"):
        read_samples(f)
    wide = write_jsonl(tmp_path / "wide.jsonl", [{"text": "x", "image": png_uri(imagefile.MAX_IMAGE_SIDE + 1, 1)}])
    with pytest.raises(CalibrationError, match="4097x1 pixels"):
        imagefile.decode_image(read_samples(wide)[0], "wide.jsonl")
    long = write_jsonl(tmp_path / "long.jsonl", [{"text": "x" * (imagefile.MAX_LINE_CHARS + 1)}])
    with pytest.raises(CalibrationError, match="long.jsonl:1: the line is over"):
        read_samples(long)
    assert not has_images(write_jsonl(tmp_path / "t.jsonl", [{"text": "no pictures"}]))
