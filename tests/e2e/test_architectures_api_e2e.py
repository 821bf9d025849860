"""Issue 20 over the API: a mixture-of-experts job and a vision-language job through `presso serve` (HTTP, the
worker, the store), as a user submits them; the artifacts downloaded and loaded the documented way."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from svc_helpers import presso_process
from tiny_models import save_tiny_llava, save_tiny_mixtral

from presso.client import PressoClient

IDS = torch.tensor([[1, 2, 3, 4, 5, 6]])
EVAL = {"windows": 2, "seq_len": 32, "latency": False}
CALIB = {"samples": 4, "seq_len": 32}


def test_moe_and_vlm_jobs_over_the_api(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from presso.load import load

    models = tmp_path / "models"
    moe, vlm = save_tiny_mixtral(models / "mixtral"), models / "llava"
    original = save_tiny_llava(vlm)
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESSO_")}
    env.update({"PRESSO_DATA_DIR": str(data), "PRESSO_ALLOWED_FILE_ROOTS": str(models), "OMP_NUM_THREADS": "1"})
    with presso_process(["serve"], env, tmp_path / "serve.log") as (_proc, url):
        key = (data / "dev-api-key").read_text().strip()
        with PressoClient(url, key) as client:
            gptq = {"steps": [{"method": "gptq", "bits": 4, "group_size": 16, "expert_min_tokens": 8}]}
            a = client.submit({"model_uri": moe.as_uri(), "recipe": gptq, "calibration": CALIB, "evaluation": EVAL,
                               "force": True})
            rtn = {"steps": [{"method": "rtn", "bits": 4, "group_size": 16}]}
            b = client.submit({"model_uri": vlm.as_uri(), "recipe": rtn, "calibration": CALIB, "evaluation": EVAL,
                               "force": True})
            log = tmp_path / "serve.log"
            done_a = client.wait(a["id"], timeout=300, poll=0.5)
            assert done_a["state"] == "succeeded", (done_a, log.read_text()[-4000:])
            done_b = client.wait(b["id"], timeout=300, poll=0.5)
            assert done_b["state"] == "succeeded", (done_b, log.read_text()[-4000:])

            # every expert compressed, as the report served by the API says
            experts = done_a["metrics"]["steps"][0]["experts"]
            assert experts["experts"] == 8 and experts["expert_linears_compressed"] == experts["expert_linears"] == 24
            report = client.report(a["id"])
            rows = [r for r in report["layers"] if "expert" in r]
            assert len(rows) == 24 and all("tokens_seen" in r for r in rows)
            out_a = tmp_path / "out-moe"
            client.download(a["id"], out_a)
            out_b = tmp_path / "out-vlm"
            client.download(b["id"], out_b)

    with torch.no_grad():  # the documented loaders, outside the service
        got = load(out_a)(IDS).logits
        want = AutoModelForCausalLM.from_pretrained(str(out_a)).eval()(IDS).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (out_b / "preprocessor_config.json").exists()
    vlm_loaded = AutoModelForImageTextToText.from_pretrained(str(out_b)).eval()
    tower = {k: v for k, v in original.state_dict().items() if "vision_tower" in k}
    assert tower and all(torch.equal(vlm_loaded.state_dict()[k], v) for k, v in tower.items())
