import json

import numpy as np
import pytest
import torch

from presso.compression.errors import CalibrationError
from presso.compression.io.calibration import generate_windows, load_windows, windows_from_ids, windows_from_text


class CharTok:
    """A tokenizer stand-in: one token per character."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False, return_tensors="pt"):
        return {"input_ids": torch.tensor([[ord(c) % 256 for c in text]])}


def test_consecutive_windows_from_start():
    ids = torch.arange(100)
    w = windows_from_ids(ids, samples=3, seq_len=10, source="x")
    assert w.shape == (3, 10) and w[1, 0] == 10 and w[2, 9] == 29


def test_too_short_is_a_clear_error():
    with pytest.raises(CalibrationError, match="fewer than one sequence"):
        windows_from_ids(torch.arange(5), 1, 10, "calib.txt")


def test_text_jsonl_and_token_files(tmp_path):
    tok = CharTok()
    (tmp_path / "a.txt").write_text("abcdefghij" * 10)
    assert load_windows(tmp_path / "a.txt", tok, 2, 16, None).shape == (2, 16)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": "xyz" * 20}) for _ in range(3)))
    assert load_windows(tmp_path / "b.jsonl", tok, 4, 16, None).shape == (4, 16)
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(CalibrationError, match="'text'"):
        load_windows(tmp_path / "bad.jsonl", tok, 1, 16, None)
    np.save(tmp_path / "ids.npy", np.arange(64) % 50)
    assert load_windows(tmp_path / "ids.npy", None, 2, 32, vocab_size=50).shape == (2, 32)
    with pytest.raises(CalibrationError, match="vocabulary"):
        load_windows(tmp_path / "ids.npy", None, 2, 32, vocab_size=10)


def test_prefix_tokenization_matches_full():
    tok = CharTok()
    text = "hello world " * 500
    w = windows_from_text(tok, text, 2, 20)
    full = tok(text)["input_ids"][0][:40].reshape(2, 20)
    assert torch.equal(w, full)


def test_self_generated_calibration_is_deterministic(tiny_llama):
    a = generate_windows(tiny_llama, None, 2, 16, seed=3, prompt="x", device=torch.device("cpu"))
    b = generate_windows(tiny_llama, None, 2, 16, seed=3, prompt="x", device=torch.device("cpu"))
    assert a.shape == (2, 16) and torch.equal(a, b)
