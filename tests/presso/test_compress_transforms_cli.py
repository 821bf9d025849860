"""`presso compress` end to end with the issue 19 transforms and KV-cache scales on a tiny model: the artifact loads
as docs/formats.md says (transformers + compressed-tensors, and presso.load), both give the same logits, and
those stay close to the dense model's."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from presso.cli import main

pytest.importorskip("compressed_tensors")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = "the cat sat on a mat and the dog ran far away from the quick brown fox".split()


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(3000)))
    return path


def compress_cli(model_dir: Path, calib: Path, out: Path, recipe: dict) -> dict:
    code = main(["compress", str(model_dir), "--recipe", json.dumps(recipe), "--calib", str(calib), "--samples", "8",
                 "--seq-len", "64", "--no-eval", "--device", "cpu", "--out", str(out)])
    assert code == 0
    return json.loads((out / "report.json").read_text())


def loaded_logits(model_dir: Path, out: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dense model, transformers + compressed-tensors on the artifact, presso.load on the artifact) logits."""
    from transformers import AutoModelForCausalLM

    from presso.load import load

    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        dense = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()(ids).logits
        theirs = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()(ids).logits
        ours = load(out)(ids).logits
    return dense, theirs, ours


def test_smoothquant_int8(tmp_path: Path, tiny_llama_dir: Path, calib_text: Path) -> None:
    report = compress_cli(tiny_llama_dir, calib_text, tmp_path / "out",
                          {"steps": [{"method": "smoothquant", "alpha": 0.6}, {"method": "int8"}]})
    sq = next(s for s in report["steps"] if s["method"] == "smoothquant")
    assert sq["smoothed"] == 4  # q/k/v and gate/up in each of 2 blocks
    qcfg = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "int-quantized"
    dense, theirs, ours = loaded_logits(tiny_llama_dir, tmp_path / "out")
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert float((ours - dense).pow(2).mean() / dense.pow(2).mean()) < 1e-2


def test_kv_cache_fp8_on_w4a16(tmp_path: Path, tiny_llama_dir: Path, calib_text: Path) -> None:
    """FP8 KV cache on top of RTN W4A16 (pack-quantized): the scales are in the artifact, presso.load simulates the
    cache, transformers (+ compressed-tensors 0.20.1, transformers 5.25) reads the weights with the cache unquantized
    (docs/formats.md, 'KV cache')."""
    from presso.compression.core import kvquant

    out = tmp_path / "out"
    report = compress_cli(tiny_llama_dir, calib_text, out, {
        "steps": [{"method": "rtn", "bits": 4, "group_size": 32}], "kv_cache": {"format": "fp8"}})
    kv = next(s for s in report["steps"] if s["method"] == "kv_cache")
    assert kv["format"] == "fp8" and len([r for r in report["layers"] if "k_scale" in r]) == 2
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "pack-quantized" and qcfg["kv_cache_scheme"]["type"] == "float"
    presso = json.loads((out / "presso.json").read_text())
    assert "kv-cache-fp8" in json.dumps(presso)
    dense, theirs, ours = loaded_logits(tiny_llama_dir, out)
    from presso.load import load

    loaded = load(out)
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), kvquant.disabled(loaded):
        no_kv = loaded(ids).logits
    torch.testing.assert_close(theirs, no_kv, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours, no_kv)
    assert float((ours - dense).pow(2).mean() / dense.pow(2).mean()) < 5e-2


def test_rotate_then_int8(tmp_path: Path, tiny_llama_dir: Path, calib_text: Path) -> None:
    out = tmp_path / "out"
    report = compress_cli(tiny_llama_dir, calib_text, out, {"steps": [{"method": "rotate"}, {"method": "int8"}]})
    rot = next(s for s in report["steps"] if s["method"] == "rotate")
    assert rot["probe_logit_change"] < 1e-3 and rot["dim"] == 64
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["format"] == "int-quantized" and cfg["tie_word_embeddings"] is False
    dense, theirs, ours = loaded_logits(tiny_llama_dir, out)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert float((ours - dense).pow(2).mean() / dense.pow(2).mean()) < 1e-2
