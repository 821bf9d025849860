"""Issue 21 over the API: a job with ``resources: {gpus: 2}`` through `presso serve` (HTTP, the worker consuming the
gpu-x2 queue, the store) runs as two gloo ranks on this CPU and publishes the same weight bytes as the same job on
one rank; the artifact loads with transformers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from svc_helpers import presso_process

from presso.client import PressoClient


def _weights(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.safetensors")}


def test_a_two_rank_job_over_the_api(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    models = tmp_path / "models"
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(models / "llama")
    np.save(models / "calib.npy", np.random.default_rng(0).integers(0, 256, size=32 * 32).astype(np.int64))
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESSO_")}
    env.update({"PRESSO_DATA_DIR": str(data), "PRESSO_ALLOWED_FILE_ROOTS": str(models), "OMP_NUM_THREADS": "1",
                "PRESSO_WORKER_QUEUES": "gpu,cpu,gpu-x2"})
    body = {"model_uri": (models / "llama").as_uri(), "force": True,
            "recipe": {"steps": [{"method": "gptq", "bits": 4, "group_size": 32}]},
            "calibration": {"uri": (models / "calib.npy").as_uri(), "samples": 32, "seq_len": 32},
            "evaluation": {"windows": 2, "seq_len": 32, "latency": False}}
    log = tmp_path / "serve.log"
    with presso_process(["serve"], env, log) as (_proc, url):
        key = (data / "dev-api-key").read_text().strip()
        with PressoClient(url, key) as client:
            two = client.submit({**body, "resources": {"gpus": 2}})
            one = client.submit(body)
            done_two = client.wait(two["id"], timeout=300, poll=0.5)
            assert done_two["state"] == "succeeded", (done_two, log.read_text()[-4000:])
            done_one = client.wait(one["id"], timeout=300, poll=0.5)
            assert done_one["state"] == "succeeded", (done_one, log.read_text()[-4000:])
            assert done_two["metrics"]["ranks"] == 2 and "ranks" not in done_one["metrics"]
            assert done_two["metrics"]["ppl_after"] == done_one["metrics"]["ppl_after"]  # the same model
            client.download(two["id"], tmp_path / "two")
            client.download(one["id"], tmp_path / "one")
    assert "2 ranks started" in log.read_text()
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a and a == b
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "two")).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3, 4]])).logits).all()
