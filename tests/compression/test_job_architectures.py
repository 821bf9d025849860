"""run_local end to end (issue 20) on a checkpoint as transformers saves it: a mixture-of-experts model
(per-expert tensors on disk, fused experts in memory) and a vision-language model with processor files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import save_tiny_llava, save_tiny_mixtral

from presso.compression.job import run_local
from presso.compression.recipe import parse_recipe
from presso.compression.spec import LocalJobSpec

IDS = torch.tensor([[1, 2, 3, 4, 5, 6]])


def _spec(model_dir: Path, out: Path, recipe: dict[str, Any]) -> LocalJobSpec:
    return LocalJobSpec(model_uri=str(model_dir), out_dir=out, recipe=parse_recipe(recipe),
                        calibration={"samples": 4, "seq_len": 32},
                        evaluation={"windows": 2, "seq_len": 32, "latency": False})


def test_moe_job_compresses_every_expert(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from presso.load import load

    save_tiny_mixtral(tmp_path / "model")
    spec = _spec(tmp_path / "model", tmp_path / "out",
                 {"steps": [{"method": "gptq", "bits": 4, "group_size": 16, "expert_min_tokens": 8}]})
    res = run_local(spec)
    experts = res.metrics["steps"][0]["experts"]
    assert experts["experts"] == 8 and experts["expert_linears_compressed"] == experts["expert_linears"] == 24
    report = json.loads((spec.out_dir / "report.json").read_text())
    rows = [r for r in report["layers"] if "expert" in r]
    assert len(rows) == 24 and all(r["tokens_seen"] >= 0 and r["rel_error"] > 0 for r in rows)
    starved = {r["name"] for r in rows if r["tokens_seen"] < 8}
    assert starved == set(experts["fallbacks"])  # exactly the experts under the threshold, each said why
    manifest = json.loads((spec.out_dir / "presso.json").read_text())
    assert {"presso.load", "transformers"} <= set(manifest["loaders"])
    with torch.no_grad():
        a = load(spec.out_dir)(IDS).logits
        b = AutoModelForCausalLM.from_pretrained(str(spec.out_dir)).eval()(IDS).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_vlm_job_keeps_vision_and_processor(tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    model = save_tiny_llava(tmp_path / "model")
    spec = _spec(tmp_path / "model", tmp_path / "out", {"steps": [{"method": "rtn", "bits": 4, "group_size": 16}]})
    res = run_local(spec)
    names = [r["name"] for r in json.loads((spec.out_dir / "report.json").read_text())["layers"]]
    assert len(names) == 14 and all(".language_model.layers." in n for n in names)
    assert res.metrics["ppl_after"] > 0
    assert (spec.out_dir / "preprocessor_config.json").exists()
    loaded = AutoModelForImageTextToText.from_pretrained(str(spec.out_dir)).eval()
    tower = {k: v for k, v in model.state_dict().items() if "vision_tower" in k}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tower.items())


def test_streamed_moe_job_equals_the_in_memory_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Streaming builds the model on the meta device, unfuses the experts there and reads each expert's
    tensors by name from the shards (Qwen-family checkpoints name them as the expert view does)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from presso.load import load

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("qwen3_moe", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=300, head_dim=16,
                               num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                               max_position_embeddings=64)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "model")
    logits = {}
    for mode in ("off", "on"):
        spec = LocalJobSpec(model_uri=str(tmp_path / "model"), out_dir=tmp_path / mode,
                            recipe=parse_recipe({"steps": [{"method": "rtn", "bits": 4, "group_size": 16}]}),
                            evaluation={"enabled": False}, streaming=mode)
        with caplog.at_level(logging.INFO, logger="presso.compression.job"):
            res = run_local(spec)
        assert ("streaming the model block by block" in caplog.text) == (mode == "on")
        caplog.clear()
        assert res.metrics["steps"][0]["experts"]["expert_linears_compressed"] == 24
        with torch.no_grad():
            logits[mode] = load(spec.out_dir)(IDS).logits
    torch.testing.assert_close(logits["on"], logits["off"], rtol=0, atol=0)
